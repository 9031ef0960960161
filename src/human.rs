//! Values as people write them, for messages: durations rounded to what matters.

use std::time::Duration;

/// A duration rounded for reading: `850 ms`, `2.5 s`, `20 s`, `2 min`, `2 min 5 s`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms} ms");
    }
    if ms < 10_000 {
        // Tenths of a second below ten seconds; a whole second reads without the `.0`.
        let tenths = (ms + 50) / 100;
        return if tenths.is_multiple_of(10) {
            format!("{} s", tenths / 10)
        } else {
            format!("{}.{} s", tenths / 10, tenths % 10)
        };
    }
    let s = (ms + 500) / 1000;
    if s < 120 {
        return format!("{s} s");
    }
    match (s / 60, s % 60) {
        (min, 0) => format!("{min} min"),
        (min, rest) => format!("{min} min {rest} s"),
    }
}

/// An age, in the largest unit it has two of: `45 s`, `12 min`, `5 h`, `40 days`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3_600 => format!("{} h", s / 3_600),
        s if s >= 120 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_are_in_the_largest_unit_with_two_of_it() {
        let age = |s| super::age(std::time::Duration::from_secs(s));
        assert_eq!([age(45), age(150), age(7_300), age(3 * 86_400 + 5)], ["45 s", "2 min", "2 h", "3 days"]);
        assert_eq!(age(u64::MAX), format!("{} days", u64::MAX / 86_400));
    }

    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_millis(1000)), "1 s");
        assert_eq!(duration(Duration::from_millis(2_449)), "2.4 s");
        assert_eq!(duration(Duration::from_millis(9_960)), "10 s");
        assert_eq!(duration(Duration::from_millis(20_049)), "20 s");
        assert_eq!(duration(Duration::from_millis(40_590)), "41 s");
        assert_eq!(duration(Duration::from_secs(120)), "2 min");
        assert_eq!(duration(Duration::from_secs(125)), "2 min 5 s");
    }
}
