"""The progress bar: it says that the first step compiles, and its rate and ETA are the steady state's."""
import io

from mindedit.utils import progress


def test_eta_is_measured_after_the_first_step_that_compiles(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    bar = progress.Progress(1000, "stage1", stream=out, min_interval=0.0)
    assert out.getvalue() == "stage1: compiling and running the first step ...\n"
    clock[0] = 300.0           # the first step: 5 minutes of graph compile
    bar.update(100)
    assert out.getvalue().rstrip().endswith("ETA     ?")
    for _ in range(3):         # then 100 tokens a second
        clock[0] += 1.0
        bar.update(100)
    line = out.getvalue().split("\r")[-1]
    assert "400/1000 tok    100.0 tok/s ETA     6s" in line, line
    bar.close()
    assert out.getvalue().endswith("(303s)\n")
