"""The names ``--device`` accepts, apart from ``dnalm.devices`` so that building the command line needs no torch."""

CHOICES = ("auto", "cpu", "cuda")
