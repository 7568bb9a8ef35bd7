"""What a reading can physically be. Outside these bounds a value is a read error, not data.

Only what cannot be physical is refused: a dying sensor that reads 140 °C is still a reading,
one that reads 1e32 °C or below absolute zero is not.
"""

from __future__ import annotations

# The kernel prints sysfs and procfs numbers from C integers of at most 64 bits.
INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1

ABSOLUTE_ZERO_MC = -273150
# The hottest reading any sensor with an hwmon or thermal driver can give: thermocouple
# converters (MAX31856 reads thermocouples to about 1800 °C). Silicon dies shut down near
# 125 °C, so a ceiling this high refuses only garbage.
TEMP_MAX_MC = 2_000_000
# One hwmon power sensor in one node: whole nodes draw at most ~15 kW and a rack ~150 kW, so
# 1 MW cannot be a measurement.
POWER_MAX_UW = 10**12
# One RAPL package zone: the biggest CPU sockets draw ~500 W and their power delivery is rated
# well under 1 kW. 10 kW is out of reach of any package, while a garbage value that looks like
# a counter wrap usually implies far more (a fake wrap of a 262 kJ range within a 15 s scrape
# interval is ~17 kW).
RAPL_PACKAGE_MAX_WATTS = 10_000.0
# DCMI Get Power Reading returns each power as a 2-byte field in watts and the sampling period
# as a 4-byte count of milliseconds.
DCMI_MAX_WATTS = 65535.0
DCMI_MAX_PERIOD_S = (2**32 - 1) / 1000.0


def non_negative(raw: int) -> bool:
    """Counters, speeds and states the kernel keeps unsigned."""
    return raw >= 0


def positive(raw: int) -> bool:
    return raw > 0


def millicelsius(raw: int) -> bool:
    """A temperature in m°C above absolute zero (which no sensor reaches) and below any range."""
    return ABSOLUTE_ZERO_MC < raw <= TEMP_MAX_MC


def microwatts(raw: int) -> bool:
    """hwmon power is consumption (``power*_input``: "power use"): never negative."""
    return 0 <= raw <= POWER_MAX_UW


def boolean(raw: int) -> bool:
    """Attributes the kernel prints as 0 or 1 (``carrier``)."""
    return raw in (0, 1)
