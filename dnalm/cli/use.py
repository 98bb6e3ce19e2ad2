"""Using a bundle: ``dnalm generate``, ``embed`` and ``score-variants``."""

from __future__ import annotations

import sys
from pathlib import Path

from dnalm.cli.registry import arg, command, device_arg
from dnalm.utils.errors import DnalmError
from dnalm.utils.files import refuse_file_as_folder, write_atomic


@command(
    "generate",
    help="sample DNA from a decoder bundle (FASTA on stdout)",
    args=[
        arg("--model", type=Path, required=True, help="a decoder bundle (dnalm convert)"),
        arg("--prompt", required=True, help="the bases to continue (A, C, G, T, N)"),
        arg("--max-new-tokens", type=int, default=200),
        arg("--temperature", type=float, default=1.0, help="0 for greedy"),
        arg("--top-k", type=int, default=None, help="keep the k most likely tokens (an absolute count)"),
        arg("--top-p", type=float, default=None, help="nucleus sampling: keep the most likely tokens up to this mass"),
        arg("--num-samples", type=int, default=1),
        arg("--seed", type=int, default=0),
        arg("--out", type=Path, default=None, help="write FASTA here instead of stdout"),
        device_arg(),
    ],
)
def generate(args) -> None:
    from dnalm.bundle import load_pretrained
    from dnalm.use.generate import generate as sample
    from dnalm.use.generate import to_fasta
    from dnalm.utils.devices import resolve

    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise DnalmError("--max-new-tokens and --num-samples must be at least 1")
    if not args.temperature >= 0:  # NaN too
        raise DnalmError(f"--temperature {args.temperature}: give 0 (greedy) or more; 1 samples the model as it is")
    if args.top_k is not None and args.top_k < 1:
        raise DnalmError(f"--top-k {args.top_k}: give 1 or more (the k most likely tokens), or leave it out")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise DnalmError(f"--top-p {args.top_p}: give a probability mass in (0, 1], or leave it out")
    if args.out is not None and args.out.is_dir():
        raise DnalmError(f"--out {args.out}: is a folder; give a file name for the FASTA, e.g. {args.out / 'g.fa'}")
    if args.out is not None:
        refuse_file_as_folder(args.out.parent, "--out's folder")
    model, tokenizer = load_pretrained(args.model, device=resolve(args.device))
    sequences = sample(
        model,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_samples=args.num_samples,
        seed=args.seed,
    )
    fasta = to_fasta(
        sequences,
        len(args.prompt),
        f"seed={args.seed} temperature={args.temperature} top_k={args.top_k} "
        f"top_p={args.top_p} model={args.model.name}",
    )
    if args.out:
        write_atomic(args.out, fasta)  # its folder made first, as embed's
        print(f"wrote {len(sequences)} sequences to {args.out}")
    else:
        print(fasta, end="")


@command(
    "embed",
    help="embeddings of FASTA records, BED regions or CSV sequences from a bundle (.npy/.npz + index)",
    args=[
        arg("--model", type=Path, required=True, help="a bundle (dnalm convert)"),
        arg("--fasta", type=Path, default=None, help="embed every record of this FASTA"),
        arg(
            "--bed", type=Path, default=None, help="embed these regions (minus strand reverse-complemented) of --genome"
        ),
        arg("--genome", type=Path, default=None, help="the FASTA the --bed regions refer to"),
        arg("--csv", type=Path, default=None, help="a CSV (or .tsv) with a sequence column, optional name and label"),
        arg("--out", type=Path, required=True, help=".npy (pooled) or .npz; OUT.index.tsv names the rows"),
        arg(
            "--pooling",
            choices=("mean", "max", "cls", "none"),
            default="mean",
            help="none: every token's row with its base span",
        ),
        arg(
            "--layer", type=int, default=-1, help="1…n_layers, or negative from the end (default -1, the final output)"
        ),
        arg(
            "--reverse-complement-average", action="store_true", help="average with the reverse complement's embedding"
        ),
        arg("--batch-size", type=int, default=8, help="windows per forward pass (default 8)"),
        device_arg(),
    ],
)
def embed(args) -> None:
    from dnalm.bundle import load_pretrained
    from dnalm.use import sequences
    from dnalm.use.embedding import embed as run_embed
    from dnalm.use.embedding import save
    from dnalm.utils.devices import resolve

    given = [name for name in ("fasta", "bed", "csv") if getattr(args, name)]
    if len(given) != 1:
        raise DnalmError("embed: give exactly one of --fasta, --bed (with --genome) or --csv")
    if args.bed and not args.genome:
        raise DnalmError("embed: --bed needs --genome, the FASTA its regions refer to")
    if args.batch_size < 1:
        raise DnalmError("--batch-size must be at least 1")
    inputs = (
        sequences.from_fasta(args.fasta)
        if args.fasta
        else sequences.from_bed(args.bed, args.genome)
        if args.bed
        else sequences.from_csv(args.csv)
    )
    model, tokenizer = load_pretrained(args.model, device=resolve(args.device))
    result = run_embed(
        model,
        tokenizer,
        [s.sequence for s in inputs],
        pooling=args.pooling,
        layer=args.layer,
        reverse_complement_average=args.reverse_complement_average,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
    )
    out, index = save(result, inputs, args.out)
    print(
        f"wrote {len(inputs)} sequences' embeddings ({args.pooling} pooling, layer {args.layer}) to {out}; rows named "
        f"in {index}"
    )


@command(
    "score-variants",
    help="zero-shot variant-effect scores from a bundle: likelihood ratio (decoder) or "
    "masked marginal (encoder), both strands averaged",
    args=[
        arg(
            "--model",
            type=Path,
            required=True,
            help="a bundle (dnalm convert): decoder, or encoder with the nucleotide tokenizer",
        ),
        arg("--vcf", type=Path, required=True, help="VCF, plain or gzip/bgzip"),
        arg("--genome", type=Path, required=True, help="the FASTA the VCF refers to"),
        arg("--out", type=Path, required=True, help="TSV of scores (one row per allele); OUT.summary.json beside it"),
        arg("--window", type=int, default=512, help="bases of genome around each variant (default 512)"),
        arg("--batch-size", type=int, default=16, help="variants per forward pass (default 16)"),
        device_arg(),
    ],
)
def score_variants(args) -> None:
    from dnalm.bundle import load_pretrained
    from dnalm.genome import IndexedGenome
    from dnalm.use.variants import read_vcf, write_results
    from dnalm.use.variants import score_variants as score
    from dnalm.utils.devices import resolve

    if args.batch_size < 1:
        raise DnalmError("--batch-size must be at least 1")
    variants = read_vcf(args.vcf)
    model, tokenizer = load_pretrained(args.model, device=resolve(args.device))
    score(model, tokenizer, variants, IndexedGenome(args.genome), window=args.window, batch_size=args.batch_size)
    summary = write_results(variants, args.out)
    counts = ", ".join(f"{n} {status}" for status, n in summary["by_status"].items())
    print(f"{summary['alleles']} alleles: {counts}; wrote {args.out}")
    if summary["not_scored_lines"]:
        print(
            f"not scored (see the status column): VCF lines {', '.join(map(str, summary['not_scored_lines'][:20]))}"
            + (" …" if len(summary["not_scored_lines"]) > 20 else "")
        )
