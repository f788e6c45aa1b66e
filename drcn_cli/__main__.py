from drcn_cli.cli import main

main()
