def hparams(hparam_dict=None, metric_dict=None, *args, **kwargs):
    return None, None, None
