"""`python -m mathrl` = the `mathrl` command (launchers such as torchrun start it this way)."""

from mathrl.cli import main

main()
