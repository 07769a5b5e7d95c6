"""Running an ablation: raw sources in; every variant trained per seed, scored, and the report out.

In: a ``[{"source", "inputs"}]`` list (as ``pairforge run`` takes), an output folder
and an :class:`~pipeline.ablate.config.AblationConfig`. Out, under the folder::

    corpus-naive/       the naive ingest (texts as given, no filters, no dedup)
    corpus/             pairforge's ingest, its mined versions (``<d>-mined-naive``,
                        ``<d>-mined-percpos``) and curated versions
    configs/<v>.json    each variant's data_config.json (and its .meta.json)
    runs/<v>/seed-<s>/  model/, scores.json and timing.json of each training run
    base/scores.json    the start model's scores
    cache/              the embedding cache mining and curation share
    report.json, report.md, ablation.png

The work is split into units that each skip what is up to date, so variants share
every stage they have in common (one clean ingest, one mining per choice, one
curation) and a rerun after a kill goes on where it stopped: ingest, mining and
curation skip on a matching manifest, training on a finished run with the same
config hash, scoring on a ``scores.json`` of the same model fingerprint and
benchmarks. :func:`run_ablation` runs the units in order in this process; the
``pairforge-ablate`` flow (flows/ablate.py) runs the same units as tasks.

Every variant is scored on the same benchmarks: the user's STSb files, the held-out
NLI triplets of the clean corpus (and further NLI inputs), and the clean corpus's
held-out rows pooled into one retrieval task (the corpus's training texts as
distractors) and one triplet task (BM25-mined negatives) (:mod:`pipeline.evaluate`);
a figure resting on fewer than ``min_rows`` rows is left out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.ablate.config import AblationConfig
from pipeline.ablate.plan import MINING_OPTIONS, VARIANTS, Variant
from pipeline.corpus.files import atomic_write_json, config_hash
from pipeline.corpus.folders import discover_datasets
from pipeline.corpus.schema import negative_columns

Echo = Callable[[str], Any]
SCORES_NAME = "scores.json"
TIMING_NAME = "timing.json"
CURATED_BEFORE_MINING = ("decontaminate", "consistency")
CURATED_AFTER_MINING = ("rescore",)


@dataclass(frozen=True)
class AblationPaths:
    """Where an ablation's files go (see the module docstring)."""

    out: Path

    @property
    def corpus(self) -> Path:
        return self.out / "corpus"

    @property
    def naive_corpus(self) -> Path:
        return self.out / "corpus-naive"

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    def corpus_of(self, variant: Variant) -> Path:
        return self.naive_corpus if variant.corpus == "naive" else self.corpus

    def data_config(self, variant: str) -> Path:
        return self.out / "configs" / f"{variant}.json"

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.out / "runs" / variant / f"seed-{seed}"

    @property
    def base_dir(self) -> Path:
        return self.out / "base"


def ingest_config(kind: str, config: AblationConfig) -> Any:
    """The IngestConfig of the ``naive`` or ``clean`` corpus."""
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.normalize import TextFilters

    if kind == "clean":
        return IngestConfig(heldout_fraction=config.heldout_fraction)
    # As a user gets the pairs without pairforge: texts untouched, no length rule, no
    # dedup. Empty texts and rows the source cannot parse are still dropped (no trainer
    # takes them either).
    filters = TextFilters(min_chars=1, max_chars=10**9, drop_anchor_equals_positive=False, clean_text=False)
    return IngestConfig(filters=filters, dedup=False, heldout_fraction=config.heldout_fraction)


def corpus_kinds(config: AblationConfig) -> list[str]:
    """The corpora the chosen variants need (``clean`` always: the benchmarks are its held-out rows)."""
    kinds = ["clean"]
    if any(VARIANTS[v].corpus == "naive" for v in config.variants):
        kinds.append("naive")
    return kinds


def build_corpus(
    kind: str, sources: Sequence[dict[str, Any]], paths: AblationPaths, config: AblationConfig, progress: bool = True
) -> list[dict[str, Any]]:
    """Ingest every source into the ``naive`` or ``clean`` corpus; the manifests written (or found up to date).

    Raises:
        ValueError: an input failed to read (the message names it).
    """
    from pipeline.ingest.plan import ingest_source

    out = paths.naive_corpus if kind == "naive" else paths.corpus
    manifests = []
    for entry in sources:
        result = ingest_source(entry["source"], entry["inputs"], out, ingest_config(kind, config), progress=progress)
        if result.failures:
            failed = "; ".join(f"{f['path']}: {f['error']}" for f in result.failures)
            raise ValueError(f"{entry['source']}: an input failed, the ablation needs every input whole: {failed}")
        manifests += result.manifests
    return manifests


def _trainable(manifest: dict[str, Any]) -> bool:
    return int(manifest.get("rows_train", 0)) > 0


def _is_pair_dataset(manifest: dict[str, Any]) -> bool:
    return _trainable(manifest) and not negative_columns(manifest["columns"])


def ingested(corpus: Path) -> dict[str, dict[str, Any]]:
    """The datasets of a corpus made by ingest (not mined or curated), by name."""
    return {n: m for n, m in discover_datasets(corpus).items() if not m.get("mined_from") and not m.get("curated_from")}


def mine_dataset(dataset: str, choice: str, paths: AblationPaths, config: AblationConfig, echo: Echo | None = None) -> dict[str, Any]:
    """Mine ``dataset`` of the clean corpus with mining choice ``naive`` or ``percpos`` into ``<dataset>-mined-<choice>``."""
    from pipeline.mining import MiningConfig, mine_negatives

    options = {**MINING_OPTIONS[choice], "model": config.model}
    return mine_negatives(
        paths.corpus / dataset, paths.corpus / f"{dataset}-mined-{choice}", MiningConfig(**options),
        cache_dir=paths.cache, device=config.device, echo=echo,
    )  # fmt: skip


def curation_config(step: str, config: AblationConfig, paths: AblationPaths) -> Any:
    """The config of a curation step of the ``filtered`` variant."""
    from pipeline.curate import STEPS
    from pipeline.embed.models import default_model_path

    if step == "decontaminate":
        nli = [str(paths.corpus / name) for name in heldout_triplet_datasets(paths.corpus)]
        return STEPS[step].config(stsb=config.stsb, nli=(*nli, *config.nli), heldout=True)
    if step == "rescore":
        return STEPS[step].config(model=config.model or str(default_model_path()))
    return STEPS[step].config(model=config.model)


def curate_dataset(step: str, dataset: str, paths: AblationPaths, config: AblationConfig, echo: Echo | None = None) -> dict[str, Any]:
    """Run curation ``step`` on ``dataset`` of the clean corpus; its output is ``<dataset><suffix>``."""
    from pipeline.curate import STEPS

    chosen = STEPS[step]
    options: dict[str, Any] = {"echo": echo}
    if chosen.uses_model:
        options |= {"cache_dir": paths.cache, "device": config.device}
    return chosen.run(paths.corpus / dataset, paths.corpus / f"{dataset}{chosen.suffix}", curation_config(step, config, paths), **options)


def heldout_triplet_datasets(corpus: Path) -> list[str]:
    """The ingested NLI datasets with negatives and held-out rows: the held-out triplet benchmark."""
    return [
        n for n, m in ingested(corpus).items()
        if m.get("source") == "nli" and negative_columns(m["columns"]) and int(m.get("rows_heldout", 0)) > 0
    ]  # fmt: skip


def prepare_datasets(paths: AblationPaths, config: AblationConfig, echo: Echo | None = None) -> dict[str, list[str]]:
    """Mine and curate what the chosen variants need; each variant's training datasets, by variant.

    Units: one mining per (pair dataset, mining choice), the curation chain per dataset
    for ``filtered``. A dataset a step leaves without training rows drops out of the
    variant that would train on it.
    """
    datasets = {}
    clean = ingested(paths.corpus)
    pairs = [n for n, m in clean.items() if _is_pair_dataset(m)]
    with_negatives = [n for n, m in clean.items() if _trainable(m) and n not in pairs]
    for name in config.variants:
        variant = VARIANTS[name]
        if variant.corpus == "naive":
            datasets[name] = [n for n, m in ingested(paths.naive_corpus).items() if _trainable(m)]
        elif variant.mining is None:
            datasets[name] = [n for n, m in clean.items() if _trainable(m)]
        elif not variant.curated:
            mined = [mine_dataset(d, variant.mining, paths, config, echo)["dataset"] for d in pairs]
            datasets[name] = _trainable_names(paths.corpus, [*with_negatives, *mined])
        else:
            datasets[name] = _trainable_names(paths.corpus, _curated_chain(pairs, with_negatives, variant, paths, config, echo))
    return datasets


def _curated_chain(
    pairs: list[str], with_negatives: list[str], variant: Variant, paths: AblationPaths, config: AblationConfig, echo: Echo | None
) -> list[str]:
    """decontaminate -> consistency -> (pairs: mining) -> rescore; the last version of each dataset."""
    names = {d: d for d in [*with_negatives, *pairs]}
    for step in CURATED_BEFORE_MINING:
        for dataset, current in names.items():
            if _trainable(_manifest(paths.corpus / current)):
                names[dataset] = curate_dataset(step, current, paths, config, echo)["dataset"]
    for dataset in pairs:
        if _trainable(_manifest(paths.corpus / names[dataset])):
            names[dataset] = mine_dataset(names[dataset], variant.mining or "percpos", paths, config, echo)["dataset"]
    for step in CURATED_AFTER_MINING:
        for dataset, current in names.items():
            if _trainable(_manifest(paths.corpus / current)):
                names[dataset] = curate_dataset(step, current, paths, config, echo)["dataset"]
    return list(names.values())


def _manifest(folder: Path) -> dict[str, Any]:
    from pipeline.corpus.manifest import MANIFEST_NAME

    return json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))


def _trainable_names(corpus: Path, names: list[str]) -> list[str]:
    return [Path(n).name for n in names if _trainable(_manifest(corpus / Path(n).name))]


def write_variant_config(variant: str, datasets: list[str], paths: AblationPaths, config: AblationConfig) -> list[dict[str, Any]]:
    """The variant's data_config.json: exactly its datasets, with proportional weights or the config's policy."""
    from pipeline.sampling.data_config import write_data_config
    from pipeline.sampling.policies import WeightPolicy

    corpus = paths.corpus_of(VARIANTS[variant])
    others = tuple(sorted(set(discover_datasets(corpus)) - set(datasets)))
    if VARIANTS[variant].weighted:
        kind, alpha = config.weight_policy, config.weight_alpha if config.weight_policy == "temperature" else 1.0
    else:
        kind, alpha = "proportional", 1.0
    policy = WeightPolicy(kind=kind, alpha=alpha, exclude=others, prefer_mined=False, prefer_curated=False)  # type: ignore[arg-type]
    return write_data_config(corpus, paths.data_config(variant), policy)


def train_config(config: AblationConfig, seed: int) -> Any:
    """The TrainConfig every run shares, with its seed."""
    from pipeline.train.config import TrainConfig

    return TrainConfig(
        model=config.model, batch_size=config.batch_size, max_steps=config.max_steps, learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps, max_seq_length=config.max_seq_length, seed=seed, device=config.device,
        save_steps=config.max_steps, save_total_limit=1, logging_steps=max(1, config.max_steps // 6),
    )  # fmt: skip


def train_variant(variant: str, seed: int, paths: AblationPaths, config: AblationConfig) -> dict[str, Any]:
    """Train the variant once with ``seed`` (skipped when that run finished already).

    The summary's ``train_seconds`` is what the training took when it ran (kept in the
    run's ``timing.json``), a skipped run's included. A finished run's checkpoints are
    removed: the model and its ``train_config.json`` are what the ablation keeps.
    """
    import shutil

    from pipeline.train.task import CHECKPOINTS_DIR, TRAIN_CONFIG_NAME, run_config_hash, train_model

    corpus = paths.corpus_of(VARIANTS[variant])
    run = paths.run_dir(variant, seed)
    options = train_config(config, seed)
    checkpoints = run / "model" / CHECKPOINTS_DIR
    marker = checkpoints / TRAIN_CONFIG_NAME
    if marker.is_file():
        # checkpoints of a killed run: resumed when its options are these, else (the
        # ablation rerun with other options) this folder is the ablation's to start over
        if json.loads(marker.read_text(encoding="utf-8")).get("config_hash") != run_config_hash(corpus, paths.data_config(variant), options):
            shutil.rmtree(checkpoints)
    summary = train_model(corpus, paths.data_config(variant), run / "model", options)
    # A finished run is recorded in its train_config.json; its checkpoints (optimizer
    # state, about three times the model) only served a resume while it trained.
    shutil.rmtree(checkpoints, ignore_errors=True)
    timing = run / TIMING_NAME
    if not summary.get("skipped"):
        atomic_write_json(timing, {"config_hash": summary["config_hash"], "train_seconds": summary["seconds"]})
    recorded = json.loads(timing.read_text(encoding="utf-8")) if timing.is_file() else {}
    seconds = recorded.get("train_seconds") if recorded.get("config_hash") == summary["config_hash"] else None
    return summary | {"train_seconds": seconds}


def eval_config(paths: AblationPaths, config: AblationConfig) -> Any:
    """The benchmarks every variant is scored on (see the module docstring)."""
    from pipeline.evaluate.config import EvalConfig

    datasets = tuple(n for n, m in ingested(paths.corpus).items() if int(m.get("rows_heldout", 0)) > 0)
    nli = tuple(str(paths.corpus / n) for n in heldout_triplet_datasets(paths.corpus)) + config.nli
    return EvalConfig(
        stsb=config.stsb, nli=nli, corpus=str(paths.corpus), datasets=datasets or None,
        max_heldout_rows=config.max_heldout_rows, max_distractors=config.max_distractors, min_rows=config.min_rows,
        device=config.device, show_progress=False,
    )  # fmt: skip


def score_model_dir(model_dir: Path, out_dir: Path, benchmarks: Any, evaluation: Any, echo: Echo | None = None) -> dict[str, Any]:
    """Score one model into ``out_dir/scores.json`` (skipped when it holds this model's scores).

    Figures resting on fewer than the evaluation's ``min_rows`` rows are left out.
    """
    from pipeline.embed.models import load_encoder, model_fingerprint
    from pipeline.evaluate.task import metric_rows, score_model

    fingerprint = model_fingerprint(model_dir)
    benchmarks_hash = config_hash(evaluation.as_dict())
    target = out_dir / SCORES_NAME
    if target.is_file():
        found = json.loads(target.read_text(encoding="utf-8"))
        if found.get("model_fingerprint") == fingerprint and found.get("eval_config_hash") == benchmarks_hash:
            return found
    model = load_encoder(model_dir, device=evaluation.device)
    rows = metric_rows(benchmarks)
    metrics = {k: v for k, v in score_model(model, benchmarks, evaluation).items() if rows.get(k, 0) >= evaluation.min_rows}
    del model
    scores = {
        "model": str(model_dir), "model_fingerprint": fingerprint, "eval_config_hash": benchmarks_hash,
        "metrics": metrics, "rows": {name: rows.get(name) for name in metrics},
    }  # fmt: skip
    atomic_write_json(target, scores)
    if echo:
        echo(f"scored {model_dir}: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
    return scores


def run_ablation(
    sources: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    config: AblationConfig = AblationConfig(),
    echo: Echo | None = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and score every variant of the recipe per seed, in this process, and write the report.

    Args:
        sources: ``[{"source": "nli", "inputs": ["s1.dev"]}, ...]``; inputs as paths.
        out_dir: the ablation's folder (see the module docstring); a rerun reuses what is done.
        config: variants, seeds, training budget and benchmarks.
        echo: where progress lines go (None for silence).
        progress: show progress bars while ingesting.

    Returns:
        The report, exactly as written to ``report.json``.

    Example::

        from pipeline.ablate import AblationConfig, run_ablation

        sources = [{"source": "nli", "inputs": ["snli/senteval/s1.dev"]}]
        report = run_ablation(sources, "ablation/", AblationConfig(stsb=("sts-dev.csv",), seeds=(1, 2, 3)))
        print(report["verdict"]["text"])
    """
    from pipeline.ablate.report import write_ablation_report
    from pipeline.embed.models import resolve_model_path
    from pipeline.evaluate.benchmarks import load_benchmarks

    paths = AblationPaths(Path(out_dir))
    say = echo or (lambda _line: None)
    for kind in corpus_kinds(config):
        say(f"ablation: ingest ({kind})")
        build_corpus(kind, sources, paths, config, progress)
    datasets = prepare_datasets(paths, config, echo)
    for variant in config.variants:
        write_variant_config(variant, datasets[variant], paths, config)
    evaluation = eval_config(paths, config)
    benchmarks = load_benchmarks(evaluation)
    base = score_model_dir(resolve_model_path(config.model), paths.base_dir, benchmarks, evaluation, echo)
    scores: dict[str, dict[int, dict[str, Any]]] = {}
    trained: dict[str, dict[int, dict[str, Any]]] = {}
    for variant in config.variants:
        for seed in config.seeds:
            say(f"ablation: train {variant}, seed {seed} ({config.max_steps} steps)")
            trained.setdefault(variant, {})[seed] = train_variant(variant, seed, paths, config)
            run = paths.run_dir(variant, seed)
            scores.setdefault(variant, {})[seed] = score_model_dir(run / "model", run, benchmarks, evaluation, echo)
    return write_ablation_report(paths, config, datasets, scores, base, trained)
