"""The concurrency controller, driven by synthetic samples of a modelled link (issue #12). No clock, no I/O."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from obsbatch.engine.concurrency import AutoConcurrency, FixedConcurrency, per_worker


class Link:
    """A fluid model of uploads: a request takes `rtt` s; the client completes at most `cpu_rate` requests/s
    (its CPU); a throttling server admits at most `admit_rate` per second and answers the rest 503 (re-sent).
    `noise` scales each step's rate by a random factor in [1 - noise, 1 + noise] (seeded)."""

    def __init__(self, rtt, cpu_rate, admit_rate=float("inf"), noise=0.0, seed=1, fault_rate=0.0):
        self.rtt, self.cpu_rate, self.admit_rate, self.noise = rtt, cpu_rate, admit_rate, noise
        self.fault_rate = fault_rate  # a share of requests that fail and are re-sent whatever the load
        self.random = random.Random(seed)
        self.now = self.done = self.resent = 0.0
        self.levels = []

    def rate(self, level):
        return min(level / self.rtt, self.cpu_rate)

    def run(self, controller, seconds, step=0.05, demand=None):
        for _ in range(int(seconds / step)):
            level = controller.level
            rate = self.rate(level) * (1 + self.noise * (2 * self.random.random() - 1))
            if rate > self.admit_rate:
                self.resent += (rate - self.admit_rate) * step
                rate = self.admit_rate
            self.done += rate * step
            self.resent += sum(self.random.random() < self.fault_rate for _ in range(int(rate * step)))
            self.now += step
            busy = level if demand is None else min(level, demand)
            self.levels.append(controller.sample(self.now, int(self.done), int(self.resent), busy))
        return controller.level


def test_a_distant_store_gets_many_uploads_in_flight_up_to_the_clients_cpu():
    link = Link(rtt=0.020, cpu_rate=3000)  # the knee: 60 in flight
    level = link.run(AutoConcurrency(), seconds=10)
    assert 48 <= level <= 160, link.levels
    assert link.rate(level) >= 0.95 * 3000
    assert link.levels[0] == 8 and max(link.levels[:30]) >= 60  # it starts modestly, and grows within 1.5 s


def test_a_seeded_start_hides_the_round_trip_from_the_first_request():
    """Issue #21: the pre-flight's round trip sets the start, so a short run over a far link is not spent
    climbing; on loopback the start is the same modest one as unseeded."""
    for rtt, cpu_rate in ((0.020, 2000), (0.080, 2000)):
        link, seeded = Link(rtt=rtt, cpu_rate=cpu_rate), AutoConcurrency()
        seeded.seed(rtt, workers=2)
        assert seeded.level == min(round(2 * rtt / AutoConcurrency.CPU_PER_REQUEST), AutoConcurrency.SEED_CAP)
        link.run(seeded, seconds=3)
        unseeded = Link(rtt=rtt, cpu_rate=cpu_rate)
        unseeded.run(AutoConcurrency(), seconds=3)
        # Slow start grows per completion, so unseeded climbs fast too; the seed still saves its first rounds.
        assert link.done > (1.1 if rtt > 0.05 else 1.02) * unseeded.done, (rtt, link.levels, unseeded.levels)
        assert link.rate(link.levels[-1]) >= 0.9 * cpu_rate
    loopback = AutoConcurrency()
    loopback.seed(0.0003, workers=2)
    assert loopback.level == AutoConcurrency.INITIAL
    capped = AutoConcurrency(maximum=16)
    capped.seed(0.080, workers=2)
    assert capped.level == 16


def test_slow_start_grows_as_requests_complete_not_when_the_round_is_judged():
    """Issue #21: one more in flight per request completed while the level is in use (TCP's per-ACK growth),
    up to twice the round's start; not while the walk leaves the level unused."""
    controller = AutoConcurrency(initial=32)
    controller.sample(0.0, 0, 0, 32)
    assert controller.sample(0.05, 20, 0, 32) == 52  # mid-round: 20 completed at a full level
    assert controller.sample(0.10, 30, 0, 30) == 52  # 30 busy of 52: not the limit, no growth
    assert controller.sample(0.12, 100, 0, 52) == 64  # at most twice the round's start before it is judged
    idle = AutoConcurrency(initial=32)
    idle.sample(0.0, 0, 0, 4)
    assert idle.sample(0.05, 20, 0, 4) == 32

    far = Link(rtt=0.080, cpu_rate=3000)  # the knee: 240 in flight
    seeded = AutoConcurrency()
    seeded.seed(0.080, workers=2)
    far.run(seeded, seconds=3)
    # Doubling only when a round was judged reached 90 % of the rate at 0.55 s; per completion, 0.45 s.
    reached = next(i for i, level in enumerate(far.levels) if far.rate(level) >= 0.9 * 3000)
    assert reached * 0.05 <= 0.45 + 1e-9, far.levels


def test_the_further_the_store_the_more_in_flight():
    near, far = Link(rtt=0.020, cpu_rate=3000), Link(rtt=0.080, cpu_rate=3000)
    assert far.run(AutoConcurrency(), 10) > near.run(AutoConcurrency(), 10)
    assert far.rate(far.levels[-1]) >= 0.9 * 3000


def test_a_loopback_store_needs_few():
    link = Link(rtt=0.001, cpu_rate=1500)  # the knee: 1.5 in flight; more only queues on the CPU
    level = link.run(AutoConcurrency(), seconds=10)
    assert level <= 16, link.levels


def test_it_grows_while_throughput_rises_even_with_noise():
    link = Link(rtt=0.020, cpu_rate=3000, noise=0.1, seed=7)
    level = link.run(AutoConcurrency(), seconds=15)
    assert link.rate(level) >= 0.9 * 3000, link.levels


def test_a_throttling_server_brings_it_down_and_it_resends_far_less_than_a_fixed_256():
    auto, fixed = Link(rtt=0.020, cpu_rate=3000, admit_rate=500), Link(rtt=0.020, cpu_rate=3000, admit_rate=500)
    level = auto.run(AutoConcurrency(), seconds=20)
    fixed.run(FixedConcurrency(256), seconds=20)
    assert level <= 24, auto.levels  # 500/s at 20 ms needs 10 in flight
    assert auto.resent < fixed.resent / 20
    assert auto.done >= 0.8 * fixed.done  # and it uploads about as much


def test_errors_back_off_multiplicatively_and_end_slow_start():
    controller = AutoConcurrency(initial=64)
    now, done = 0.0, 0
    for _ in range(3):  # a saturated round at 64 with 20 of its 100 requests re-sent
        now += 0.2
        done += 100
        controller.sample(now, done, 0 if now < 0.3 else 20, 64)
    assert controller.level == 44 and not controller.slow_start  # floor(64 * 0.7)


def test_a_few_resends_in_a_round_are_noise():
    controller = AutoConcurrency(initial=64)
    controller.sample(0.0, 0, 0, 64)
    controller.sample(0.2, 100, 2, 64)  # 2 of 100: noise; the round is judged, and slow start goes on
    assert controller.level == 128 and controller.slow_start
    controller.sample(0.4, 300, 27, 128)  # 25 of 200: more than 10 %
    assert controller.level == 89 and not controller.slow_start


def test_a_link_that_drops_some_requests_whatever_the_load_does_not_starve_it():
    """scripts/soak's 5 % of faults made the first version hold 1 in flight (twice as slow as a fixed 8)."""
    link = Link(rtt=0.020, cpu_rate=3000, fault_rate=0.05, seed=3)
    level = link.run(AutoConcurrency(), seconds=15)
    assert level >= 40 and link.rate(level) >= 0.66 * 3000, link.levels


def test_rounds_limited_by_the_walk_change_nothing():
    link = Link(rtt=0.020, cpu_rate=3000)
    link.run(AutoConcurrency(), seconds=5, demand=3)  # never more than 3 files to upload at once
    assert set(link.levels) == {8}


@settings(max_examples=300)
@given(st.integers(1, 512), st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(0, 5000), st.integers(0, 50),
                                               st.integers(0, 600)), max_size=200))
def test_the_level_never_leaves_its_bounds(maximum, steps):
    controller = AutoConcurrency(maximum=maximum, minimum=1)
    now = done = resent = 0
    for dt, more_done, more_resent, busy in steps:
        now += dt
        done += more_done
        resent += more_resent
        level = controller.sample(now, done, resent, busy)
        assert 1 <= level <= maximum


def test_fixed_never_moves_and_shares_round_up():
    fixed = FixedConcurrency(6)
    assert fixed.sample(1.0, 10, 10, 6) == 6 and fixed.sample(9.0, 99, 99, 0) == 6
    assert [per_worker(level, 2) for level in (1, 2, 3, 8, 255)] == [1, 1, 2, 4, 128]
