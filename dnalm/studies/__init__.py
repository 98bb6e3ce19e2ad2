"""One-off studies, apart from the measuring commands of ``dnalm.bench``: the DNA_Performer comparison
(``dnalm bench compare``)."""
