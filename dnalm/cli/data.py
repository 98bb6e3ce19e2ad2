"""Data preparation: ``dnalm prep``."""

from __future__ import annotations

import sys
from pathlib import Path

from dnalm.cli.registry import arg, command, setting
from dnalm.utils.errors import DnalmError


def _prep_description(name: str) -> str:
    from data_prep.plan import PrepConfig

    return PrepConfig.model_fields[name].description or ""


def _prep_setting(name: str):
    from data_prep.plan import PrepConfig

    return setting(PrepConfig, name)


@command(
    "prep",
    help="shard genomes into WebDataset token windows with a manifest (resumable, splits into jobs)",
    args=[
        arg(
            "genomes",
            nargs="*",
            type=Path,
            metavar="GENOME",
            help="FASTA files, or one corpus YAML (genomes with names, "
            "weights, tags and contig include/exclude patterns; see data_prep/corpus.py); default: the bundled E. coli "
            "genome",
        ),
        arg(
            "--out",
            required=True,
            help="the data folder (created; re-running resumes an unfinished prep), or s3://bucket/prefix: "
            "the prep runs in --work and uploads each finished shard, then the manifest last",
        ),
        arg(
            "--work",
            type=Path,
            default=None,
            help="with --out s3://…: the local work folder (default: under the node-local "
            "cache, $DNALM_CACHE, else $TMPDIR/dnalm-cache-$USER, else /tmp/dnalm-cache-$USER, one per URL)",
        ),
        arg(
            "--tokenizers",
            default="nucleotide",
            help="comma-separated: nucleotide, kmer:K[:1], bpe:PATH (default nucleotide)",
        ),
        *(
            _prep_setting(name)
            for name in (
                "seq_len",
                "views",
                "val_fraction",
                "val_block_bases",
                "reverse_complement",
                "shard_size_mb",
                "min_n_run",
                "seed",
                "pack_fragments",
            )
        ),
        arg(
            "--exclude",
            nargs="+",
            action="extend",
            type=Path,
            default=None,
            metavar="FILE",
            help=f"{_prep_description('exclude')}; after the genomes, or repeated; see `dnalm data leakage`",
        ),
        _prep_setting("exclude_k"),
        arg("--jobs", type=int, default=1, help="local processes (default 1)"),
        arg("--job-index", type=int, default=None, help="run only slice I of the plan (SLURM array task id)"),
        arg("--num-jobs", type=int, default=None, help="number of slices when --job-index is given"),
    ],
)
def prep(args) -> None:
    from data_prep.corpus import GenomeSettings, is_corpus, load_corpus
    from data_prep.jobs import prep as run_prep
    from data_prep.jobs import summary
    from data_prep.plan import PrepConfig
    from data_prep.publish import work_folder
    from dnalm import genome
    from dnalm.data.sources import is_remote
    from dnalm.utils.files import refuse_file_as_folder

    if (args.job_index is None) != (args.num_jobs is None):
        raise DnalmError("--job-index and --num-jobs go together")
    if args.num_jobs is not None and not 0 <= args.job_index < args.num_jobs:
        raise DnalmError(f"--job-index must be in 0..{args.num_jobs - 1}, got {args.job_index}")
    if args.jobs < 1:
        raise DnalmError(f"--jobs must be at least 1, got {args.jobs}")
    genomes = [str(p) for p in args.genomes or [genome.DEFAULT_GENOME]]
    corpus: list[GenomeSettings] = []
    if any(is_corpus(p) for p in genomes):
        if len(genomes) > 1:
            raise DnalmError("give one corpus YAML or FASTA files, not both (list every genome in the corpus)")
        genomes, corpus = load_corpus(genomes[0])
    config = PrepConfig.checked(
        genomes=genomes,
        corpus=corpus,
        tokenizers=[t.strip() for t in args.tokenizers.split(",") if t.strip()],
        seq_len=args.seq_len,
        views=args.views,
        val_fraction=args.val_fraction,
        val_block_bases=args.val_block_bases,
        reverse_complement=args.reverse_complement,
        shard_size_mb=args.shard_size_mb,
        min_n_run=args.min_n_run,
        seed=args.seed,
        pack_fragments=args.pack_fragments,
        exclude=[str(p) for p in args.exclude or []],
        exclude_k=args.exclude_k,
    )
    remote = is_remote(args.out)
    if args.work is not None and not remote:
        raise DnalmError("--work goes with a remote --out (s3://…); a local --out is the work folder")
    folder = (args.work or work_folder(args.out)) if remote else Path(args.out)
    refuse_file_as_folder(folder, "--work" if remote else "--out")
    result = run_prep(
        config,
        folder,
        jobs=args.jobs,
        job_index=args.job_index,
        num_jobs=args.num_jobs,
        progress=sys.stderr.isatty(),
        publish_to=args.out if remote else None,
    )
    summary(result)
