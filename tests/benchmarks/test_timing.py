"""The one place the benchmarks time things and take medians of their runs."""
import math
import time

from semidff.benchmarks.timing import Runs, Stopwatch, format_runs, median, time_calls


class FakeClock:
    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_median_and_runs_as_the_reports_print_them():
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([1.0, 2.0]) == 1.5 and median(x for x in (4.0,)) == 4.0
    assert math.isnan(median([]))  # a measure that never ran
    assert format_runs([1.234, 2.0]) == "1.23, 2.00" and format_runs([305.4], 0) == "305"
    assert format_runs([12.8, 3.0], unit="%") == "12.80%, 3.00%" and format_runs([]) == ""


def test_stopwatch_measures_its_block_and_laps():
    with Stopwatch(FakeClock(0.0, 10.0, 12.5)) as watch:  # made, started, stopped
        pass
    assert watch.seconds == 2.5 and watch.seconds == 2.5  # stopped: the same on every read
    watch = Stopwatch(FakeClock(0.0, 1.0, 3.0, 6.0, 7.0))
    assert (watch.lap(), watch.lap(), watch.lap()) == (1.0, 2.0, 3.0)
    assert watch.seconds == 7.0  # not stopped: the seconds so far
    with Stopwatch(time.process_time) as cpu:
        sum(range(10_000))
    assert cpu.seconds >= 0


def test_time_calls_warms_up_untimed_then_keeps_every_run():
    now, calls = [0.0], []

    def call():  # the n-th call takes n seconds
        calls.append(len(calls) + 1)
        now[0] += calls[-1]
        return calls[-1]

    runs = time_calls(call, 3, warmup=2, clock=lambda: now[0])
    assert calls == [1, 2, 3, 4, 5]  # 2 warm-up calls, then 3 timed
    assert isinstance(runs, Runs) and runs.seconds == [3.0, 4.0, 5.0] and runs.results == [3, 4, 5] and runs.median_s == 4.0
