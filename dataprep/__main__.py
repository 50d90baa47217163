"""`python -m dataprep JOB.yaml --out DIR`: prepare a job's data, as the cloud entry command does.

Exit codes: 0 done, 2 bad input (the job file or the data; one line on stderr naming the file and
line), 1 anything else. Never a traceback for the user's mistakes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (train.jsonl, val.jsonl, train/, val/, report.*).")
@click.option("--base-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder that relative source paths start from (default: the job file's folder).")
@click.option("--skip-bad", is_flag=True, help="Quarantine bad rows into rejects.jsonl instead of stopping.")
@click.option("--set", "overrides", multiple=True, metavar="A.B=V", help="Override a job field, e.g. --set data.max_length=512.")
def main(job: Path, out_dir: Path, base_dir: Path | None, skip_bad: bool, overrides: tuple[str, ...]) -> None:
    """Turn the raw data of JOB into tokenized, packed training data in --out."""
    from launcher.spec import SpecError, load_spec, parse_set

    from .errors import DataError

    try:
        spec = load_spec(job, parse_set(overrides))
        from .pipeline import prepare

        report = prepare(spec, out_dir, base_dir or job.resolve().parent, skip_bad=skip_bad)
    except (SpecError, DataError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(f"dataprep: {report['summary']}; report: {out_dir / 'report.md'}")


if __name__ == "__main__":
    main()
