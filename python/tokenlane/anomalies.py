"""Spend anomaly detectors: streaming, per key (a principal, a route, a tag such as ``feature=search``),
each compared with its own recent past, so one rule fits a tenant spending cents and one spending
dollars.

- ``spend_spike``: spend over the last 5 minutes far above the key's own baseline (median and MAD of
  its sliding 5-minute spend over the last hours; robust to the spikes it is looking for, and the
  trailing window follows the time-of-day swing).
- ``request_spike``: the same for the number of requests (a loop re-sending a cheap request).
- ``new_principal``: a key without history that at once spends more than established keys typically do.
- ``tokens_jump``: the median prompt size of recent requests far above the key's earlier median (a
  prompt template that grew).
- ``output_drift``: the median of actual / estimated output tokens moving away from its baseline.
- ``error_rate``, ``refusal_rate``: the recent share rising well above the key's baseline;
  ``cache_hit_rate``: the share falling.

Every detector alarms once per episode (then stays quiet for ``cooldown_s``) and keeps anomalous
data out of its baseline. ``benchmarks/anomalies.py`` measures them on replays of real traces.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from statistics import median
from typing import Any

MAD_SCALE = 1.4826  # MAD → standard deviation for normal data


@dataclass(frozen=True)
class Anomaly:
    detector: str
    key: str
    at: float
    value: float
    baseline: float
    message: str

    def payload(self) -> dict[str, Any]:
        return {"type": f"anomaly.{self.detector}", "detector": self.detector, "key": self.key, "at": self.at,
                "value": self.value, "baseline": self.baseline, "message": self.message}


class _Baseline:
    """A key's recent history of one statistic and the level above which a new value is anomalous:
    above the median by k robust deviations, by a ratio (or a shift), and above the highest value
    of the history by a margin (so swings the key has already shown recently, such as a daily peak
    or a burst that recurs, are not news). Values join the history only ``lag_s`` after they were
    seen, so a change that builds up over a few minutes is judged before it is learned."""

    def __init__(self, size: int, min_size: int, lag_s: float) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.pending: deque[tuple[float, float]] = deque()
        self.min_size, self.lag_s = min_size, lag_s
        self.median = 0.0
        self.mad = 0.0
        self.high = 0.0
        self.low = 0.0

    @property
    def ready(self) -> bool:
        return len(self.values) >= self.min_size

    def add(self, at: float, value: float) -> None:
        self.pending.append((at, value))

    def refresh(self, now: float) -> None:
        while self.pending and self.pending[0][0] <= now - self.lag_s:
            self.values.append(self.pending.popleft()[1])
        if self.ready:
            self.median = median(self.values)
            self.mad = median(abs(v - self.median) for v in self.values)
            self.high, self.low = max(self.values), min(self.values)


@dataclass
class SpendSettings:
    bucket_s: float = 60.0          # resolution of the sliding window
    window_buckets: int = 5         # the window compared with the baseline: 5 minutes
    history_buckets: int = 180      # baseline over the last 3 hours of windows
    min_history: int = 30           # windows before a key has its own baseline
    k_mad: float = 4.5              # alarm above median + k · MAD·1.4826,
    ratio: float = 3.0              # above ratio × median,
    margin: float = 1.2             # above margin × the highest window of the last 3 hours,
    floor_requests: float = 40.0    # and above this many (typical) requests in the window
    new_ratio: float = 3.0          # a new key: above ratio × the p75 of established keys' medians
    cooldown_s: float = 3600.0


class _Window:
    """A sliding sum over the last few buckets, with its baseline and alarm level."""

    __slots__ = ("buckets", "total", "baseline", "threshold")

    def __init__(self, s: SpendSettings) -> None:
        self.buckets: deque[float] = deque([0.0])
        self.total = 0.0
        self.baseline = _Baseline(s.history_buckets, s.min_history, s.window_buckets * s.bucket_s)
        self.threshold = math.inf

    def advance(self, steps: int, s: SpendSettings, at: float, alarmed: bool) -> None:
        for _ in range(steps):
            if len(self.buckets) == s.window_buckets:
                # In an alarmed episode the baseline learns at most its alarm level: a borderline
                # level becomes normal, a runaway far above it does not.
                self.baseline.add(at, min(self.total, self.threshold) if alarmed else self.total)
            self.buckets.append(0.0)
            if len(self.buckets) > s.window_buckets:
                self.total -= self.buckets.popleft()
        self.total = max(0.0, self.total)  # float drift of the running sum

    def refresh(self, s: SpendSettings, now: float, floor: float) -> None:
        b = self.baseline
        b.refresh(now)
        if b.ready:
            self.threshold = max(b.median + s.k_mad * MAD_SCALE * b.mad, s.ratio * b.median, s.margin * b.high, floor)

    def add(self, value: float) -> None:
        self.buckets[-1] += value
        self.total += value


class _SpendKey:
    __slots__ = ("spend", "requests", "bucket", "costs", "typical_cost", "quiet_until")

    def __init__(self, s: SpendSettings, bucket: int) -> None:
        self.spend, self.requests = _Window(s), _Window(s)
        self.bucket = bucket
        self.costs: deque[float] = deque(maxlen=200)  # recent request costs
        self.typical_cost = 0.0
        self.quiet_until = -math.inf                  # after an alarm: quiet, and not learning


class SpendDetector:
    """``spend_spike``, ``request_spike`` and ``new_principal`` (see the module docstring)."""

    def __init__(self, settings: SpendSettings | None = None) -> None:
        self.s = settings or SpendSettings()
        self._keys: dict[str, _SpendKey] = {}
        self._established: float = math.inf  # p75 of established keys' median window spend
        self._advances = 0

    def observe(self, key: str, at: float, cost: float) -> Anomaly | None:
        s = self.s
        index = int(at // s.bucket_s)
        k = self._keys.get(key)
        if k is None:
            k = self._keys[key] = _SpendKey(s, index)
        if index != k.bucket:
            self._advance(k, index, at)
        k.spend.add(cost)
        k.requests.add(1.0)
        k.costs.append(cost)
        if at < k.quiet_until:
            return None
        minutes = f"{s.window_buckets * s.bucket_s / 60:.0f} min"
        spend, requests = k.spend, k.requests
        if spend.baseline.ready:
            if spend.total > spend.threshold:
                k.quiet_until = at + s.cooldown_s
                return Anomaly("spend_spike", key, at, spend.total, spend.baseline.median,
                               f"{key}: {spend.total:.4g} USD in {minutes}, usually {spend.baseline.median:.4g}")
            if requests.total > requests.threshold:
                k.quiet_until = at + s.cooldown_s
                return Anomaly("request_spike", key, at, requests.total, requests.baseline.median,
                               f"{key}: {requests.total:.0f} requests in {minutes}, usually "
                               f"{requests.baseline.median:.4g}")
        elif self._established < math.inf:
            limit = max(s.new_ratio * self._established, s.floor_requests * (k.typical_cost or cost))
            if spend.total > limit:
                k.quiet_until = at + s.cooldown_s
                return Anomaly("new_principal", key, at, spend.total, self._established,
                               f"{key}: new, {spend.total:.4g} USD in {minutes}; established keys "
                               f"usually {self._established:.4g}")
        return None

    def in_episode(self, key: str, at: float) -> bool:
        """True while the key's spend or request rate is in an alarmed episode."""
        k = self._keys.get(key)
        return k is not None and at < k.quiet_until

    def _advance(self, k: _SpendKey, index: int, at: float) -> None:
        s = self.s
        steps = min(index - k.bucket, s.history_buckets + s.window_buckets)
        alarmed = at < k.quiet_until
        k.spend.advance(steps, s, at, alarmed)
        k.requests.advance(steps, s, at, alarmed)
        k.bucket = index
        if k.costs:
            k.typical_cost = median(k.costs)
        k.spend.refresh(s, at, s.floor_requests * k.typical_cost)
        k.requests.refresh(s, at, s.floor_requests)
        self._advances += 1
        if self._advances % 64 == 0:
            medians = sorted(x.spend.baseline.median for x in self._keys.values() if x.spend.baseline.ready)
            if medians:
                self._established = max(medians[int(0.75 * (len(medians) - 1))], 1e-12)


@dataclass
class ShiftSettings:
    window_s: float = 600.0   # the recent median covers the last 10 minutes ...
    min_recent: int = 200     # ... or the last 200 values, whichever is more
    eval_s: float = 60.0      # evaluated at most once a minute per key ...
    eval_every: int = 20      # ... and after this many new values
    history: int = 180        # baseline: the last 180 evaluations' medians
    min_history: int = 60
    shift: float = 0.8        # alarm above the baseline median by this much (log2: 0.8 ≈ ×1.74),
    k_mad: float = 6.0        # by k robust deviations of the key's own recent medians,
    margin: float = 0.35      # and above the highest recent median of the baseline by this much
    cooldown_s: float = 3600.0


class _ShiftKey:
    __slots__ = ("recent", "baseline", "next_eval", "fresh", "quiet_until")

    def __init__(self, s: ShiftSettings) -> None:
        self.recent: deque[tuple[float, float]] = deque()
        self.fresh = 0
        self.baseline = _Baseline(s.history, s.min_history, 2 * s.window_s)
        self.next_eval = -math.inf
        self.quiet_until = -math.inf


class MedianShift:
    """One value per request (log2 of prompt tokens, of actual / estimated output tokens); alarms
    when the median of the last minutes moves away from the key's baseline (upwards, or both ways)."""

    def __init__(self, name: str, settings: ShiftSettings | None = None, *, both_ways: bool = False) -> None:
        self.name = name
        self.s = settings or ShiftSettings()
        self.both_ways = both_ways
        self._keys: dict[str, _ShiftKey] = {}

    def observe(self, key: str, at: float, value: float) -> Anomaly | None:
        s = self.s
        k = self._keys.get(key)
        if k is None:
            k = self._keys[key] = _ShiftKey(s)
        recent = k.recent
        recent.append((at, value))
        while len(recent) > s.min_recent and recent[0][0] < at - s.window_s:
            recent.popleft()
        k.fresh += 1
        if at < k.next_eval or k.fresh < s.eval_every or len(recent) < s.min_recent:
            return None
        k.next_eval, k.fresh = at + s.eval_s, 0
        now = median(v for _, v in recent)
        b = k.baseline
        b.refresh(at)
        if not b.ready:
            b.add(at, now)
            return None
        spread = max(s.shift, s.k_mad * MAD_SCALE * b.mad)
        high, low = max(b.median + spread, b.high + s.margin), min(b.median - spread, b.low - s.margin)
        quiet = at < k.quiet_until
        b.add(at, min(max(now, low), high) if quiet else now)  # an episode teaches at most its alarm level
        if not quiet and (now > high or (self.both_ways and now < low)):
            k.quiet_until = at + s.cooldown_s
            return Anomaly(self.name, key, at, 2**now, 2**b.median,
                           f"{key}: {self.name}: median {2**now:.4g} over the last minutes, usually {2**b.median:.4g}")
        return None


class RateShift:
    """A yes/no per request (error, refusal, cache hit); alarms when the recent share moves the
    wrong way by more than both ``min_delta`` and 3 standard errors of the baseline share."""

    def __init__(self, name: str, *, falling: bool = False, recent: int = 50, baseline: int = 1000,
                 min_baseline: int = 200, min_delta: float = 0.1, cooldown_s: float = 3600.0) -> None:
        self.name, self.falling = name, falling
        self.recent, self.baseline, self.min_baseline = recent, baseline, min_baseline
        self.min_delta, self.cooldown_s = min_delta, cooldown_s
        self._keys: dict[str, list[Any]] = {}

    def observe(self, key: str, at: float, flag: bool) -> Anomaly | None:
        state = self._keys.get(key)
        if state is None:  # recent window, its count, baseline window, its count, quiet until
            state = self._keys[key] = [deque(), 0, deque(), 0, -math.inf]
        recent, _, base, _, quiet = state
        recent.append(flag)
        state[1] += flag
        if len(recent) > self.recent:
            old = recent.popleft()
            state[1] -= old
            base.append(old)
            state[3] += old
            if len(base) > self.baseline:
                state[3] -= base.popleft()
        if len(base) < self.min_baseline or at < quiet:
            return None
        p_base, p_now = state[3] / len(base), state[1] / len(recent)
        delta = (p_base - p_now) if self.falling else (p_now - p_base)
        se = math.sqrt(max(p_base * (1 - p_base), 1e-4) / len(recent))
        if delta > max(self.min_delta, 3 * se):
            state[4] = at + self.cooldown_s
            base.clear()
            state[3] = 0
            return Anomaly(self.name, key, at, p_now, p_base, f"{key}: {self.name} {p_now:.1%}, baseline {p_base:.1%}")
        return None


class Anomalies:
    """All detectors behind one call per reconciled request; ``on_anomaly`` gets each alarm."""

    def __init__(self, *, spend: SpendSettings | None = None, shift: ShiftSettings | None = None,
                 on_anomaly: Callable[[Anomaly], Any] | None = None) -> None:
        self.spend = SpendDetector(spend)
        self.tokens = MedianShift("tokens_jump", shift)
        self.output = MedianShift("output_drift", shift, both_ways=True)
        self.errors = RateShift("error_rate")
        self.refusals = RateShift("refusal_rate")
        self.cache = RateShift("cache_hit_rate", falling=True)
        self.on_anomaly = on_anomaly

    def observe(self, keys: Iterable[str], at: float, *, cost_usd: float = 0.0, input_tokens: int = 0,
                output_tokens: int | None = None, est_output_tokens: int | None = None, error: bool = False,
                refused: bool = False, cache_hit: bool | None = None) -> list[Anomaly]:
        alarms: list[Anomaly] = []

        def add(alarm: Anomaly | None) -> None:
            if alarm is not None:
                alarms.append(alarm)

        for key in keys:
            add(self.refusals.observe(key, at, refused))
            if refused:
                continue
            add(self.spend.observe(key, at, cost_usd))
            add(self.errors.observe(key, at, error))
            if self.spend.in_episode(key, at):
                continue  # a runaway's requests would teach the per-request baselines its own sizes
            if input_tokens > 0:
                add(self.tokens.observe(key, at, math.log2(input_tokens)))
            if output_tokens and est_output_tokens and not error:
                add(self.output.observe(key, at, math.log2(output_tokens / est_output_tokens)))
            if cache_hit is not None:
                add(self.cache.observe(key, at, cache_hit))
        if self.on_anomaly is not None:
            for a in alarms:
                self.on_anomaly(a)
        return alarms


__all__ = ["Anomalies", "Anomaly", "MedianShift", "RateShift", "ShiftSettings", "SpendDetector", "SpendSettings"]
