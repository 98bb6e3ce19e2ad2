"""The names ``--device`` accepts, apart from ``dnalm.utils.devices`` so that building the command line needs no
torch."""

CHOICES = ("auto", "cpu", "cuda")
