//! What a figure reports: the times of its repetitions and its line in the table.

use std::time::Duration;

use crate::common::percentile;
use crate::peer::DELIVERY_LIMIT;

/// The times of one figure's repetitions, seconds; a message that never arrived counts as
/// infinite (it sorts last).
#[derive(Default)]
pub(crate) struct Times(Vec<f64>);

impl Times {
    pub(crate) fn push(&mut self, took: Option<Duration>) {
        self.0.push(took.map_or(f64::INFINITY, |d| d.as_secs_f64()));
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, p)
    }

    pub(crate) fn runs(&self) -> usize {
        self.0.len()
    }

    fn missed(&self) -> usize {
        self.0.iter().filter(|t| t.is_infinite()).count()
    }

    pub(crate) fn summary(&self) -> String {
        let mut text = format!(
            "p50 {} / p90 {} ({} runs",
            duration(self.percentile(50.0)),
            duration(self.percentile(90.0)),
            self.runs()
        );
        if self.missed() > 0 {
            text += &format!(
                "; {} not read within {} s",
                self.missed(),
                DELIVERY_LIMIT.as_secs()
            );
        }
        text + ")"
    }

    /// Whether the p90 is within `target`.
    pub(crate) fn met(&self, target: Duration) -> Option<bool> {
        let p90 = self.percentile(90.0);
        (!p90.is_nan()).then_some(p90 <= target.as_secs_f64())
    }
}

fn duration(seconds: f64) -> String {
    if seconds.is_nan() {
        "–".into()
    } else if seconds.is_infinite() {
        format!("> {} s", DELIVERY_LIMIT.as_secs())
    } else if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.2} s")
    }
}

pub(crate) fn ms(took: Option<Duration>) -> String {
    duration(took.map_or(f64::INFINITY, |d| d.as_secs_f64()))
}

/// One line of the table.
pub(crate) struct Row {
    pub(crate) figure: u8,
    pub(crate) name: String,
    pub(crate) measured: String,
    pub(crate) target: String,
    pub(crate) met: Option<bool>,
    /// Said beside a "yes".
    pub(crate) caveat: Option<String>,
}

impl Row {
    pub(crate) fn new(
        figure: u8,
        name: &str,
        measured: String,
        target: &str,
        met: Option<bool>,
    ) -> Self {
        Self {
            figure,
            name: name.into(),
            measured,
            target: target.into(),
            met,
            caveat: None,
        }
    }

    /// A timed figure met at its p90 although some of its messages never arrived says so.
    pub(crate) fn noting_missed(mut self, times: &Times) -> Self {
        if self.met == Some(true) && times.missed() > 0 {
            self.caveat = Some(format!(
                "at p90, but {} of {} not read within {} s",
                times.missed(),
                times.runs(),
                DELIVERY_LIMIT.as_secs()
            ));
        }
        self
    }
}
