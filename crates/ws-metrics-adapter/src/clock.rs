//! The two clocks behind every value: the wall clock gives the `timestamp` the API reports, the
//! monotonic clock decides ages, so once a value is read a stepped wall clock (NTP correction, a
//! VM resumed, an operator's `date -s`) can neither keep it alive past `--max-age` nor expire it.
//! A value that carries its own wall-clock stamp (an exposition timestamp, a Prometheus sample)
//! gets its starting age from the wall clock at the moment it is read; only that moment is
//! exposed to a step.

use std::time::{Duration, Instant, SystemTime};

/// One moment on both clocks, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    /// Wall-clock time: only for timestamps shown to clients.
    pub wall: SystemTime,
    /// Monotonic time: for every age and deadline.
    pub mono: Instant,
}

impl Moment {
    /// Reads both clocks now.
    pub fn now() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

/// When a value was sampled: its wall-clock timestamp for the API and, for its age, the monotonic
/// instant the adapter read it plus how old it already was then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleTime {
    /// The sample's wall-clock time: the `timestamp` of the API answer. Never later than the
    /// wall clock at the moment the adapter read it.
    pub wall: SystemTime,
    /// Monotonic instant the adapter read the value.
    read_at: Instant,
    /// Age of the sample at `read_at` (from its own timestamp); zero for a value sampled then.
    age_at_read: Duration,
}

impl SampleTime {
    /// A value sampled at `at` (a scrape's response was read then).
    pub fn read_at(at: Moment) -> Self {
        Self {
            wall: at.wall,
            read_at: at.mono,
            age_at_read: Duration::ZERO,
        }
    }

    /// A value that carries its own wall-clock timestamp `stamped` (an exposition timestamp, a
    /// Prometheus sample time), read at `at`. Its age at `at` is the wall-clock difference then,
    /// and only grows on the monotonic clock afterwards. A stamp in the future (a skewed pod
    /// clock) counts as sampled at `at`.
    pub fn stamped(stamped: SystemTime, at: Moment) -> Self {
        match at.wall.duration_since(stamped) {
            Ok(age) => Self {
                wall: stamped,
                read_at: at.mono,
                age_at_read: age,
            },
            Err(_) => Self::read_at(at),
        }
    }

    /// Age at the monotonic instant `now`. Unit: the sample's age as a duration.
    pub fn age(&self, now: Instant) -> Duration {
        self.age_at_read
            .saturating_add(now.saturating_duration_since(self.read_at))
    }

    /// A value read at the same moment as this one but carrying its own wall-clock stamp (see
    /// [`SampleTime::stamped`]).
    pub fn restamped(&self, stamped: SystemTime) -> Self {
        let read = Moment {
            wall: self.wall + self.age_at_read,
            mono: self.read_at,
        };
        Self::stamped(stamped, read)
    }

    /// The moment at which this sample is `age` old (the wall clock assumed not to step): for
    /// tests and for reasoning about expiry. An `age` below the age it was read at gives the
    /// moment it was read.
    pub fn when_aged(&self, age: Duration) -> Moment {
        let after_read = age.saturating_sub(self.age_at_read);
        Moment {
            wall: self.wall + self.age_at_read + after_read,
            mono: self.read_at + after_read,
        }
    }

    /// Monotonic time from `earlier`'s read to this one's (zero if this was read first): the
    /// span between two scrapes, whatever the wall clock did in between.
    pub fn read_since(&self, earlier: &Self) -> Duration {
        self.read_at.saturating_duration_since(earlier.read_at)
    }

    /// The older of two sample times (the larger age); the first on a tie.
    pub fn older(self, other: Self) -> Self {
        // Ages at any common instant compare the same way; `read_at` of either is one.
        let probe = self.read_at.max(other.read_at);
        if other.age(probe) > self.age(probe) {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_grows_on_the_monotonic_clock_whatever_the_wall_clock_does() {
        let at = Moment::now();
        let t = SampleTime::read_at(at);
        let later = at.mono + Duration::from_secs(4);
        assert_eq!(t.age(later), Duration::from_secs(4));
        // Nothing about the wall clock enters the age once read.
        assert_eq!(t.age(at.mono), Duration::ZERO);
    }

    #[test]
    fn a_stamped_sample_starts_as_old_as_its_stamp() {
        let at = Moment::now();
        let t = SampleTime::stamped(at.wall - Duration::from_secs(30), at);
        assert_eq!(t.age(at.mono), Duration::from_secs(30));
        assert_eq!(t.wall, at.wall - Duration::from_secs(30));
        let epoch = SampleTime::stamped(SystemTime::UNIX_EPOCH + Duration::from_secs(1), at);
        assert!(epoch.age(at.mono) > Duration::from_secs(50 * 365 * 86_400));
    }

    #[test]
    fn a_stamp_from_the_future_counts_as_read_now() {
        let at = Moment::now();
        let t = SampleTime::stamped(at.wall + Duration::from_secs(600), at);
        assert_eq!(t.age(at.mono), Duration::ZERO);
        assert_eq!(t.wall, at.wall);
    }

    #[test]
    fn older_picks_the_larger_age() {
        let at = Moment::now();
        let old = SampleTime::stamped(at.wall - Duration::from_secs(5), at);
        let new = SampleTime::read_at(Moment {
            wall: at.wall,
            mono: at.mono + Duration::from_secs(1),
        });
        assert_eq!(old.older(new), old);
        assert_eq!(new.older(old), old);
    }
}
