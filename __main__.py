from gpuhours.cli import main

main()
