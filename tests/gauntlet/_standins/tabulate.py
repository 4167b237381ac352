"""Stand-in for tabulate: a plain-text table."""


def tabulate(rows, headers=(), tablefmt="simple", **kwargs):
    lines = [" | ".join(str(h) for h in headers)] if headers else []
    lines += [" | ".join(str(c) for c in row) for row in rows]
    return "\n".join(lines)
