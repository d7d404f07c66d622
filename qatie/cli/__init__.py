"""The command line: the `qatie` parser (`main`) and the commands it runs (`commands`)."""
