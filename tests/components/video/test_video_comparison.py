"""The compare report's fusion table: accuracy order, parameters and seconds per epoch from trial.json."""
from components.tasks import get_task


def _trial(fusion, accuracy, parameters, seconds, epochs):
    return {"metrics": {"accuracy": accuracy},
            "trial": {"params": {"model": {"params": {"fusion": fusion}}}, "parameters": parameters,
                      "seconds": seconds, "epochs_run": epochs}}


def test_fusions_are_listed_most_accurate_first_with_parameters_and_time_per_epoch():
    trials = {"fusion=single_frame": _trial("single_frame", 0.25, 1234, 20.0, 10),
              "fusion=slow": _trial("slow", 1.0, 57940, 40.0, 10)}
    [(heading, html)] = get_task("video").comparison_sections(trials)
    assert "Fusion" in heading
    assert html.index("fusion=slow") < html.index("fusion=single_frame")
    assert "57,940" in html and "4.0" in html and "2.0" in html
    assert "single frame" in html.lower() or "single_frame" in html
