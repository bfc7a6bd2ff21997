from edgefleet.dispatcher.fleet.breaker import CLOSED, HALF_OPEN, OPEN, BreakerPolicy, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(**policy: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerPolicy(**policy), clock=clock), clock  # type: ignore[arg-type]


def test_consecutive_failures_open_and_a_success_resets_the_count() -> None:
    b, _ = breaker(consecutive_failures=3)
    assert not b.failure() and not b.failure()
    b.success()
    assert not b.failure() and not b.failure()
    assert b.failure() and b.state == OPEN and not b.admits()


def test_a_refused_connection_opens_at_once() -> None:
    b, _ = breaker(consecutive_failures=5)
    assert b.failure(decisive=True) and b.state == OPEN


def test_error_rate_over_the_window_opens_even_without_a_streak() -> None:
    b, _ = breaker(consecutive_failures=100, error_rate=0.5, min_calls=10)
    for _ in range(5):
        b.success()
        opened = b.failure()
    assert opened and b.state == OPEN


def test_error_rate_needs_enough_calls_and_forgets_old_windows() -> None:
    b, clock = breaker(consecutive_failures=100, error_rate=0.5, min_calls=10, window_s=10)
    for _ in range(4):
        b.failure()
        b.success()
    clock.now += 11  # a new window: the old failures no longer count
    for _ in range(4):
        b.success()
    assert not b.failure() and b.state == CLOSED


def test_half_open_allows_one_trial_and_success_closes() -> None:
    b, clock = breaker(base_s=5)
    b.failure(decisive=True)
    clock.now += 4.9
    assert not b.admits()
    clock.now += 0.2
    assert b.admits() and b.state == HALF_OPEN
    assert b.begin() is True
    assert not b.admits() and b.begin() is None, "only one trial at a time"
    assert not b.success(trial=False), "a straggler's success is no verdict"
    assert b.success(trial=True) and b.state == CLOSED and b.begin() is False


def test_failed_trial_reopens_for_longer_up_to_the_cap() -> None:
    b, clock = breaker(base_s=5, max_s=12)
    b.failure(decisive=True)
    waits = []
    for _ in range(3):
        waits.append(round(b.open_until - clock.now, 3))
        clock.now = b.open_until
        assert b.begin() is True
        assert b.failure(trial=True)
    assert waits == [5, 10, 12]


def test_a_trial_without_verdict_frees_the_slot() -> None:
    b, clock = breaker(base_s=1)
    b.failure(decisive=True)
    clock.now += 1
    trial = b.begin()
    assert trial is True
    b.release(False)  # another attempt's release must not free the trial
    assert b.begin() is None
    b.release(trial)
    assert b.begin() is True


def test_successes_while_open_do_not_close_it() -> None:
    b, _ = breaker(consecutive_failures=2, base_s=5)
    b.failure()
    assert b.failure() and b.state == OPEN
    assert not b.success() and b.state == OPEN and b.ejections == 1


def test_straggler_failure_during_half_open_is_not_the_verdict() -> None:
    b, clock = breaker(base_s=1)
    b.failure(decisive=True)
    clock.now += 1
    assert b.begin() is True
    assert not b.failure() and b.state == HALF_OPEN
