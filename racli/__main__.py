from racli.cli import main

main()
