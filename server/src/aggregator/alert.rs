//! Hysteresis: an alert stream (a section of one vantage, or an aggregate) changes only after
//! `raise_after` (or `clear_after`) consecutive evaluations agree.

use vantage_proto::Severity;

/// Hysteresis of one alert stream (a section of one vantage, or an aggregate).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Alert {
    /// `None` until the first evaluation.
    pub(super) state: Option<Severity>,
    candidate: Severity,
    pub(super) count: u32,
}

impl Alert {
    /// Feed one evaluation; `Some((from, to))` when the alert changes.
    pub(super) fn evaluate(
        &mut self,
        raw: Severity,
        raise_after: u32,
        clear_after: u32,
    ) -> Option<(Option<Severity>, Severity)> {
        let Some(current) = self.state else {
            self.state = Some(raw);
            return Some((None, raw));
        };
        if raw == current {
            self.count = 0;
            return None;
        }
        if raw == self.candidate && self.count > 0 {
            self.count += 1;
        } else {
            self.candidate = raw;
            self.count = 1;
        }
        let needed = if raw > current {
            raise_after
        } else {
            clear_after
        };
        if self.count >= needed.max(1) {
            self.state = Some(raw);
            self.count = 0;
            return Some((Some(current), raw));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_raises_and_clears_after_consecutive_evaluations() {
        let mut a = Alert::default();
        assert_eq!(a.evaluate(Severity::Ok, 2, 3), Some((None, Severity::Ok)));
        assert_eq!(a.evaluate(Severity::Error, 2, 3), None);
        assert_eq!(
            a.evaluate(Severity::Ok, 2, 3),
            None,
            "a blip resets the count"
        );
        assert_eq!(a.evaluate(Severity::Error, 2, 3), None);
        assert_eq!(
            a.evaluate(Severity::Error, 2, 3),
            Some((Some(Severity::Ok), Severity::Error))
        );
        assert_eq!(a.evaluate(Severity::Ok, 2, 3), None);
        assert_eq!(a.evaluate(Severity::Ok, 2, 3), None);
        assert_eq!(
            a.evaluate(Severity::Ok, 2, 3),
            Some((Some(Severity::Error), Severity::Ok))
        );
    }

    #[test]
    fn default_hysteresis_is_immediate() {
        let mut a = Alert::default();
        a.evaluate(Severity::Ok, 1, 1);
        assert_eq!(
            a.evaluate(Severity::Warning, 1, 1),
            Some((Some(Severity::Ok), Severity::Warning))
        );
        assert_eq!(
            a.evaluate(Severity::Ok, 1, 1),
            Some((Some(Severity::Warning), Severity::Ok))
        );
    }
}
