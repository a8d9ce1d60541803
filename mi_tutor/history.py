"""How the field got here: this series' reading list (2009-2025) and the map of the series.

`TIMELINE` holds one `Entry` per paper: its citation (checked against the paper), a tag for the
kind of evidence it rests on and for the kind of model it studies, and the notebook of this
series that teaches its method. It is a reading list, not a census of the field: it holds the
results this series builds on and a few earlier ones that show where its methods come from. `plot_timeline` draws it
(optionally filtered), `timeline_explorer` wraps that in a widget, and `SERIES` /
`series_table` describe the notebooks and why they come in this order.

Tags:

- kind "observational": the evidence comes from *reading* the model (weights, activations,
  visualisations, decompositions) without changing what it computes;
  "interventional": the evidence comes from *changing* the computation or the input (ablating,
  patching, editing, occluding) and measuring the effect; "both" when the paper's claims rest on
  both kinds in comparable measure. `Entry.method` says what was done.
- model "vision", "toy" (small models trained on a synthetic task or tiny transformers
  studied as objects in themselves) or "LM" (language models trained on text).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

KINDS = ("observational", "interventional", "both")
MODEL_TYPES = ("vision", "toy", "LM")
FIRST_YEAR, LAST_YEAR = 2009, 2025


@dataclass(frozen=True)
class Entry:
    """One landmark result."""

    year: int
    month: int | None      # None when the source gives no month
    short: str             # label on the timeline
    title: str
    authors: str
    ref: str               # arXiv id and/or venue
    kind: str              # "observational" | "interventional" | "both"
    model: str             # "vision" | "toy" | "LM"
    notebook: str          # "00".."07": the notebook of this series that teaches it
    method: str            # what the paper did, in a few words

    @property
    def date(self) -> float:
        """Decimal year (mid-year when the month is unknown)."""
        return self.year + ((self.month - 0.5) / 12 if self.month else 0.5)

    @property
    def first_author(self) -> str:
        """"Zeiler & Fergus", "Wang et al.", "Ameisen et al." ...: short enough for a label."""
        names = self.authors.split(" (")[0]
        if "," in names:
            return names.split(",")[0] + " et al."
        return names

    def citation(self) -> str:
        when = f"{self.year}-{self.month:02d}" if self.month else str(self.year)
        return f"{self.authors}, \"{self.title}\" ({when}; {self.ref})"


TIMELINE: tuple[Entry, ...] = (
    Entry(2009, None, "Activation maximisation", "Visualizing Higher-Layer Features of a Deep Network",
          "Erhan, Bengio, Courville & Vincent", "Technical report 1341, Université de Montréal", "observational",
          "vision", "00", "optimise an input image to excite one unit as much as possible"),
    Entry(2013, 11, "Deconvnet & occlusion", "Visualizing and Understanding Convolutional Networks",
          "Zeiler & Fergus", "arXiv 1311.2901; ECCV 2014", "both", "vision", "00",
          "project activations back to pixels (reading); grey out image patches and watch the class score (an "
          "intervention on the input)"),
    Entry(2013, 12, "Saliency maps", "Deep Inside Convolutional Networks: Visualising Image Classification Models "
          "and Saliency Maps", "Simonyan, Vedaldi & Zisserman", "arXiv 1312.6034", "observational", "vision", "06",
          "the gradient of a class score with respect to the pixels"),
    Entry(2015, 6, "LSTM cells", "Visualizing and Understanding Recurrent Networks", "Karpathy, Johnson & Fei-Fei",
          "arXiv 1506.02078", "observational", "LM", "00",
          "single cells of character-level language models that track quotes, brackets and line length"),
    Entry(2016, 10, "Linear probes", "Understanding intermediate layers using linear classifier probes",
          "Alain & Bengio", "arXiv 1610.01644", "observational", "vision", "07",
          "train a linear classifier on each layer's activations to see what it makes readable"),
    Entry(2017, 4, "Sentiment neuron", "Learning to Generate Reviews and Discovering Sentiment",
          "Radford, Jozefowicz & Sutskever", "arXiv 1704.01444", "both", "LM", "00",
          "one unit of a byte-level language model tracks sentiment; fixing its value steers the generated reviews"),
    Entry(2018, 3, "Single directions", "On the importance of single directions for generalization",
          "Morcos, Barrett, Rabinowitz & Botvinick", "arXiv 1803.06959; ICLR 2018", "interventional", "vision", "00",
          "ablate single units and random directions; easily read (selective) units are not the important ones"),
    Entry(2018, 11, "GAN dissection", "GAN Dissection: Visualizing and Understanding Generative Adversarial Networks",
          "Bau, Zhu, Strobelt, Zhou, Tenenbaum, Freeman & Torralba", "arXiv 1811.10597; ICLR 2019", "both", "vision",
          "00", "match units to object segmentations, then ablate or insert units to remove or add objects"),
    Entry(2019, 3, "Number units", "The emergence of number and syntax units in LSTM language models",
          "Lakretz, Kruszewski, Desbordes, Hupkes, Dehaene & Baroni", "arXiv 1903.07435; NAACL 2019",
          "interventional", "LM", "00", "ablating two 'number units' breaks long-distance subject-verb agreement"),
    Entry(2020, 3, "Zoom In: circuits", "Zoom In: An Introduction to Circuits", "Olah et al.", "Distill",
          "observational", "vision", "00", "features, circuits and universality in InceptionV1"),
    Entry(2020, None, "Curve detectors", "Curve Detectors", "Cammarata et al.", "Distill",
          "observational", "vision", "00", "neurons that detect curves, read from weights and max-activating images"),
    Entry(2020, 4, "Causal mediation", "Investigating Gender Bias in Language Models Using Causal Mediation Analysis",
          "Vig, Gehrmann, Belinkov, Qian, Nevo, Singer & Shieber", "arXiv 2004.12265; NeurIPS 2020", "interventional",
          "LM", "03", "set a neuron's or head's activation to its value on another prompt and measure the effect (GPT-2)"),
    Entry(2021, 4, "Interpretability illusion", "An Interpretability Illusion for BERT", "Bolukbasi et al.",
          "arXiv 2104.07143", "observational", "LM", "00",
          "a neuron's top-activating examples tell a different story on each dataset they are drawn from"),
    Entry(2021, 6, "Causal abstraction", "Causal Abstractions of Neural Networks", "Geiger, Lu, Icard & Potts",
          "arXiv 2106.02997; NeurIPS 2021", "interventional", "LM", "05",
          "interchange interventions: swap a representation between inputs to test a hypothesised algorithm (BERT)"),
    Entry(2021, 12, "Math. framework", "A Mathematical Framework for Transformer Circuits", "Elhage et al.",
          "Transformer Circuits Thread", "observational", "toy", "02",
          "0-2 layer attention-only transformers read from their weights; Q/K/V-composition"),
    Entry(2022, 1, "Grokking", "Grokking: Generalization Beyond Overfitting on Small Algorithmic Datasets",
          "Power et al.", "arXiv 2201.02177", "observational", "toy", "01",
          "delayed generalisation on modular arithmetic, seen in training curves"),
    Entry(2022, 2, "ROME / causal tracing", "Locating and Editing Factual Associations in GPT", "Meng et al.",
          "NeurIPS 2022", "interventional", "LM", "05", "restore clean activations into a corrupted run; edit MLP weights"),
    Entry(2022, 3, "Induction heads", "In-context Learning and Induction Heads", "Olsson et al.",
          "Transformer Circuits Thread, Mar 2022; arXiv 2209.11895", "both", "LM", "02",
          "phase change in training; head ablations in small models, co-occurrence evidence in large ones"),
    Entry(2022, 9, "Superposition", "Toy Models of Superposition", "Elhage et al.", "arXiv 2209.10652",
          "observational", "toy", "07", "more features than dimensions in small ReLU models"),
    Entry(2022, 11, "IOI circuit", "Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2 small",
          "Wang et al.", "arXiv 2211.00593; ICLR 2023", "interventional", "LM", "03",
          "mean ablation and path patching find a 26-head circuit"),
    Entry(2022, 12, "Causal scrubbing", "Causal Scrubbing", "Chan et al. (Redwood Research)",
          "Alignment Forum", "interventional", "LM", "05",
          "test a hypothesis by resampling ablations that it says should not matter"),
    Entry(2023, 1, "Progress measures (grokking)", "Progress measures for grokking via mechanistic interpretability",
          "Nanda, Chan, Lieberum, Smith & Steinhardt", "arXiv 2301.05217; ICLR 2023", "both", "toy", "01",
          "Fourier analysis of the weights; restricted and excluded loss"),
    Entry(2023, 2, "Attribution patching", "Attribution Patching: Activation Patching At Industrial Scale", "Nanda",
          "blog post", "interventional", "LM", "06", "a gradient approximation of activation patching"),
    Entry(2023, 4, "ACDC", "Towards Automated Circuit Discovery for Mechanistic Interpretability", "Conmy et al.",
          "NeurIPS 2023", "interventional", "LM", "05", "prune edges by patching: 68 of 32,000 kept for greater-than"),
    Entry(2023, 7, "Hydra effect", "The Hydra Effect: Emergent Self-repair in Language Model Computations",
          "McGrath et al.", "arXiv 2307.15771", "interventional", "LM", "05",
          "later layers compensate when a layer is ablated"),
    Entry(2023, 9, "Patching best practices", "Towards Best Practices of Activation Patching in Language Models: "
                                              "Metrics and Methods",
          "Zhang & Nanda", "arXiv 2309.16042; ICLR 2024", "interventional", "LM", "05",
          "how corruption and metric choices change what patching finds"),
    Entry(2023, 10, "Towards monosemanticity", "Towards Monosemanticity", "Bricken et al.",
          "Transformer Circuits Thread", "observational", "LM", "07", "sparse autoencoders on a 1-layer transformer's MLP"),
    Entry(2023, 10, "EAP", "Attribution Patching Outperforms Automated Circuit Discovery", "Syed, Rager & Conmy",
          "arXiv 2310.10348", "interventional", "LM", "06", "edge attribution patching"),
    Entry(2023, 12, "Successor heads", "Successor Heads: Recurring, Interpretable Attention Heads In The Wild",
          "Gould, Ong, Ogden & Conmy", "arXiv 2312.09230; ICLR 2024", "observational", "LM", "04",
          "effective OV circuits that increment ordinal tokens"),
    Entry(2024, 2, "Self-repair", "Explorations of Self-Repair in Language Models", "Rushing & Nanda",
          "arXiv 2402.15390; ICML 2024", "interventional", "LM", "05", "how ablated heads' effects are partly restored"),
    Entry(2024, 3, "AtP*", "AtP*: An efficient and scalable method for localizing LLM behaviour to components",
          "Kramár, Lieberum, Shah & Nanda", "arXiv 2403.00745", "interventional", "LM", "06",
          "attribution patching with fixes for attention saturation and cancellation"),
    Entry(2024, 4, "Interpreting patching", "How to use and interpret activation patching", "Heimersheim & Nanda",
          "arXiv 2404.15255", "interventional", "LM", "05", "noising vs denoising; choosing metrics"),
    Entry(2024, 5, "Scaling monosemanticity", "Scaling Monosemanticity", "Templeton et al.",
          "Transformer Circuits Thread", "observational", "LM", "07", "sparse autoencoders on a production model"),
    Entry(2024, 9, "Successor heads, 4 methods", "Investigating successor heads", "Ameisen & Batson",
          "Circuits Updates, Sept 2024", "interventional", "LM", "04",
          "weights, ICA, mean ablation and attribution patching compared on one question"),
    Entry(2024, 9, "Absorption", "A is for Absorption", "Chanin et al.", "arXiv 2409.14507",
          "observational", "LM", "07", "a failure mode of SAE latents"),
    Entry(2024, 9, "Optimal ablation", "Optimal ablation for interpretability", "Li & Janson", "arXiv 2409.09951",
          "interventional", "LM", "05", "replace a component by the loss-minimising constant"),
    Entry(2025, 1, "APD", "Interpretability in Parameter Space: Minimizing Mechanistic Description Length with "
          "Attribution-based Parameter Decomposition",
          "Braun, Bushnaq, Heimersheim, Mendel & Sharkey", "arXiv 2501.14926", "both", "toy", "07",
          "decompose the weights, not the activations"),
    Entry(2025, 1, "SAEs on random transformers", "Sparse Autoencoders Can Interpret Randomly Initialized Transformers",
          "Heap et al.", "arXiv 2501.17727", "observational", "LM", "07",
          "'interpretable' latents even without training"),
    Entry(2025, 3, "Negative results for SAEs", "Negative Results for SAEs on Downstream Tasks",
          "Smith, Rajamanoharan, Conmy, Nanda et al. (GDM)", "Alignment Forum", "observational", "LM", "07",
          "SAE probes lose to linear probes out of distribution"),
    Entry(2025, 3, "Circuit tracing", "Circuit Tracing; On the Biology of a Large Language Model",
          "Ameisen, Lindsey et al.", "Transformer Circuits Thread", "both", "LM", "07",
          "cross-layer transcoders and attribution graphs, checked by perturbing the features they name"),
    Entry(2025, 6, "SPD", "Stochastic Parameter Decomposition", "Bushnaq, Braun & Sharkey", "arXiv 2506.20790",
          "both", "toy", "07", "rank-one weight components with learned causal importance"),
)

#: infrastructure the series uses (not results, so not on the timeline)
TOOLS: tuple[str, ...] = (
    "TransformerLens, Nanda & Bloom (2022; formerly EasyTransformer): hooks to read and overwrite every activation",
    "NNsight and NDIF, Fiotto-Kaufman et al. (2024-07; arXiv 2407.14561): interventions on large remote models",
)


@dataclass(frozen=True)
class NotebookInfo:
    """One notebook of the series."""

    number: str
    title: str
    methods: str
    why_here: str


SERIES: tuple[NotebookInfo, ...] = (
    NotebookInfo("00", "Linear models vs black boxes, and how the field got here",
                 "response curves, direct attribution, max activation, single-unit ablation",
                 "the vocabulary and two obstacles (non-linearity, attribution under correlated inputs), "
                 "on a model small enough to see whole"),
    NotebookInfo("01", "Grokking", "reading weights in a Fourier basis; progress measures",
                 "a toy model whose algorithm we know, so a reverse-engineered answer can be checked"),
    NotebookInfo("02", "Induction heads", "attention patterns, induction and previous-token scores, composition",
                 "the first mechanism found in transformers; Olsson et al. found it in every model of two or more "
                 "layers they studied"),
    NotebookInfo("03", "Indirect object identification", "logit difference, mean ablation, path patching",
                 "a whole circuit in a real language model, built from the heads of 02"),
    NotebookInfo("04", "Successor heads", "OV-circuit inspection vs ablation vs attribution",
                 "one behaviour, several methods: do they agree?"),
    NotebookInfo("05", "The ablation critique", "zero / mean / resample / optimal ablation; self-repair",
                 "03 and 04 rested on ablations: now ask what an ablation measures"),
    NotebookInfo("06", "Gradient and data views", "attribution patching, per-example gradients",
                 "cheap linear approximations of 05's interventions, and the data's view of a model"),
    NotebookInfo("07", "Parameter vs activation decomposition", "sparse autoencoders, APD / SPD",
                 "the current frontier: find the units of analysis instead of assuming them"),
)


def notebooks() -> list[str]:
    """The series' notebook numbers, in order."""
    return [n.number for n in SERIES]


def select(kind: str = "all", start: int = FIRST_YEAR, end: int = LAST_YEAR, model: str = "all") -> list[Entry]:
    """Timeline entries of one kind ("all", "observational", "interventional"), model type and year range."""
    if kind not in ("all",) + KINDS:
        raise ValueError(f"kind must be 'all' or one of {KINDS}, got {kind!r}")
    if model not in ("all",) + MODEL_TYPES:
        raise ValueError(f"model must be 'all' or one of {MODEL_TYPES}, got {model!r}")
    if start > end:
        raise ValueError(f"start year {start} is after end year {end}")
    return [e for e in TIMELINE if (kind == "all" or e.kind == kind) and (model == "all" or e.model == model)
            and start <= e.year <= end]


def counts(entries: Sequence[Entry] = TIMELINE) -> dict[str, dict[str, int]]:
    """How many entries per kind, per model type and per notebook."""
    out: dict[str, dict[str, int]] = {"kind": {}, "model": {}, "notebook": {}}
    for e in entries:
        for key, value in (("kind", e.kind), ("model", e.model), ("notebook", e.notebook)):
            out[key][value] = out[key].get(value, 0) + 1
    return out


KIND_COLORS = {"observational": "tab:blue", "interventional": "tab:orange", "both": "tab:purple"}
MODEL_MARKERS = {"vision": "s", "toy": "^", "LM": "o"}


def plot_timeline(kind: str = "all", start: int = FIRST_YEAR, end: int = LAST_YEAR, model: str = "all"):
    """The timeline as a figure: one row per result, oldest at the top; colour = kind of evidence,
    marker = model type, label = result and the notebook that teaches it."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    start, end = min(start, end), max(start, end)  # a widget user may drag "from" past "to"
    entries = sorted(select(kind, start, end, model), key=lambda e: e.date)
    n = max(len(entries), 1)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.26 * n))
    lo, hi = start - 0.5, end + 1
    for i, e in enumerate(entries):
        ax.plot([lo, e.date], [i, i], color="0.9", lw=0.8, zorder=0)
        ax.scatter(e.date, i, color=KIND_COLORS[e.kind], marker=MODEL_MARKERS[e.model], s=55, zorder=2,
                   edgecolor="k", linewidth=0.5)
        when = f"{e.year}-{e.month:02d}" if e.month else f"{e.year}"
        ax.text(1.01, i, f"{when}  {e.short} ({e.first_author})  → nb {e.notebook}",
                transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    if not entries:
        ax.text(0.5, 0.5, "no entries match this filter", transform=ax.transAxes, ha="center")
    ax.set_xlim(lo, hi)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_yticks([])
    ax.set_xticks(range(start, end + 1))
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    ax.grid(axis="x", color="0.85", lw=0.6)
    handles = [Line2D([], [], ls="", marker="o", color=c, label=k) for k, c in KIND_COLORS.items()]
    handles += [Line2D([], [], ls="", marker=m, color="0.5", label=t) for t, m in MODEL_MARKERS.items()]
    ax.legend(handles=handles, fontsize=7, loc="lower left", ncol=2)
    shown = f"{kind} results" if kind != "all" else "results"
    ax.set_title(f"This series' reading list, {start}-{end}: {len(entries)} {shown}"
                 + ("" if model == "all" else f" on {model} models"), fontsize=10, loc="left")
    fig.subplots_adjust(left=0.03, right=0.55, top=1 - 0.45 / (1.2 + 0.26 * n), bottom=0.7 / (1.2 + 0.26 * n))
    return fig


def timeline_explorer(kind: str = "all", start: int = FIRST_YEAR, end: int = LAST_YEAR):
    """A widget filtering the timeline by kind of method and by year range (its output carries a PNG)."""
    from .widgets import Explorer, dropdown, slider

    return Explorer(plot_timeline, {
        "kind": dropdown(["all", *KINDS], kind, description="method type"),
        "start": slider(start, FIRST_YEAR, LAST_YEAR, 1, description="from"),
        "end": slider(end, FIRST_YEAR, LAST_YEAR, 1, description="to"),
        "model": dropdown(["all", *MODEL_TYPES], "all", description="model type"),
    }, title="Timeline filter")


def series_table() -> str:
    """The series map as a Markdown table, with how many timeline results each notebook teaches."""
    per_nb = counts()["notebook"]
    rows = ["| notebook | topic | methods | why here | results on the reading list |", "|---|---|---|---|---|"]
    for nb in SERIES:
        rows.append(f"| {nb.number} | {nb.title} | {nb.methods} | {nb.why_here} | {per_nb.get(nb.number, 0)} |")
    return "\n".join(rows)


def timeline_table(entries: Sequence[Entry] = TIMELINE) -> str:
    """The timeline's data as a Markdown table (citations and tags)."""
    rows = ["| date | result | authors | reference | kind | model | notebook |", "|---|---|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: e.date):
        when = f"{e.year}-{e.month:02d}" if e.month else str(e.year)
        rows.append(f"| {when} | {e.title} | {e.authors} | {e.ref} | {e.kind} | {e.model} | {e.notebook} |")
    return "\n".join(rows)


__all__ = ["Entry", "TIMELINE", "TOOLS", "KINDS", "MODEL_TYPES", "NotebookInfo", "SERIES", "notebooks", "select",
           "counts", "plot_timeline", "timeline_explorer", "series_table", "timeline_table"]
