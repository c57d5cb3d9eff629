"""The two profiles. Both run the same code path; only the configs and the data differ."""

PROFILES = {
    "tiny": (
        "Small configs of the same model classes, pretrained and fine-tuned in-house on generated offline suites;"
        " cached; runs on a 2-core CPU in minutes. The default, and the basis of every test."
    ),
    "paper": (
        "The papers' checkpoints and data sets (Hugging Face hub / open_clip / RF100 in COCO format). Needs the"
        " files locally or a network; intended for a GPU machine."
    ),
    "micro": (
        "For tests only: the tiny profile's classes and suites at the smallest configs and sizes that still run"
        " every code path in seconds. Its numbers say nothing about the methods."
    ),
}
