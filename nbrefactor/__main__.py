from nbrefactor.cli import main

main()
