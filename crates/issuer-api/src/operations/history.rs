//! The last minutes the console charts, sampled once a second by the operations refresher
//! from what it reads anyway: a sale's page costs no query for its
//! chart, however many operators watch it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use coupon_core::domain::CouponId;

/// Samples kept: five minutes at one a second.
const KEPT: usize = 300;
/// The chart's drawing box, in the SVG's own units.
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 120.0;

/// One second's look.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// This instance's answers of each kind since it started.
    pub answers: Vec<(&'static str, u64)>,
    /// Slots taken (Redis) and rows written (PostgreSQL), per active coupon with gauges.
    pub coupons: HashMap<CouponId, (i64, i64)>,
}

#[derive(Default)]
pub struct History {
    /// Each sample with when it was taken: the refresher's second is a second plus its
    /// reads, and a refresh that failed takes none, so rates divide by the time between.
    samples: Mutex<VecDeque<(Instant, Sample)>>,
}

/// One line of a chart: its name, its CSS class, and its points in the SVG's units.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: &'static str,
    pub class: &'static str,
    pub points: String,
    /// Its last value.
    pub last: i64,
}

/// A small chart: lines over the kept seconds, scaled to the largest value.
#[derive(Debug, Clone)]
pub struct Chart {
    pub lines: Vec<Line>,
    pub max: i64,
    pub seconds: usize,
}

impl History {
    pub fn record(&self, sample: Sample) {
        self.record_at(Instant::now(), sample);
    }

    fn record_at(&self, at: Instant, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back((at, sample));
    }

    /// Slots taken and rows written per active coupon with gauges, at the last look.
    pub fn latest(&self) -> HashMap<CouponId, (i64, i64)> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .back()
            .map(|(_, s)| s.coupons.clone())
            .unwrap_or_default()
    }

    /// The coupon's slots taken and rows written over the kept seconds, if it had gauges.
    pub fn stock(&self, coupon: CouponId) -> Option<Chart> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        // A coupon that left the active ones (finished, settled) keeps its last reading:
        // it did not drop to zero. Before its first reading there is nothing to draw.
        let series = |pick: fn(&(i64, i64)) -> i64| -> Vec<i64> {
            let mut last = None;
            samples
                .iter()
                .filter_map(|(_, s)| {
                    last = s.coupons.get(&coupon).map(pick).or(last);
                    last
                })
                .collect()
        };
        if !samples.iter().any(|(_, s)| s.coupons.contains_key(&coupon)) {
            return None;
        }
        Some(chart(vec![
            ("issued in Redis", "issued", series(|(issued, _)| *issued)),
            ("rows in PostgreSQL", "rows", series(|(_, rows)| *rows)),
        ]))
    }

    /// This instance's answers per second, admitted and refused, over the kept seconds.
    pub fn answers(&self) -> Chart {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let per_second = |admitted: bool| -> Vec<i64> {
            let total = |s: &Sample| -> u64 {
                s.answers
                    .iter()
                    .filter(|(kind, _)| (*kind == "SUCCESS") == admitted)
                    .map(|(_, n)| n)
                    .sum()
            };
            samples
                .iter()
                .zip(samples.iter().skip(1))
                .map(|((then, before), (now, after))| {
                    rate(total(after).saturating_sub(total(before)), *now - *then)
                })
                .collect()
        };
        chart(vec![
            ("admitted per second", "issued", per_second(true)),
            ("refused per second", "refused", per_second(false)),
        ])
    }

    /// Answers of each kind in the last second.
    pub fn last_second(&self) -> Vec<(&'static str, u64)> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = samples.iter().rev();
        match (last.next(), last.next()) {
            (Some((now, after)), Some((then, before))) => after
                .answers
                .iter()
                .zip(&before.answers)
                .map(|((kind, n), (_, m))| {
                    let per_second = rate(n.saturating_sub(*m), *now - *then);
                    (*kind, u64::try_from(per_second).unwrap_or(0))
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// `count` over `elapsed`, per second, rounded.
fn rate(count: u64, elapsed: std::time::Duration) -> i64 {
    let seconds = elapsed.as_secs_f64().max(0.001);
    (count as f64 / seconds).round() as i64
}

fn chart(series: Vec<(&'static str, &'static str, Vec<i64>)>) -> Chart {
    let max = series
        .iter()
        .flat_map(|(_, _, values)| values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let seconds = series.iter().map(|(_, _, v)| v.len()).max().unwrap_or(0);
    let step = WIDTH / (KEPT - 1) as f64;
    let lines = series
        .into_iter()
        .map(|(name, class, values)| {
            // The newest second at the right edge, older ones leftwards.
            let offset = KEPT - values.len();
            let points = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let x = (offset + i) as f64 * step;
                    let y = HEIGHT - (*v as f64 / max as f64) * HEIGHT;
                    format!("{x:.1},{y:.1}")
                })
                .collect::<Vec<_>>()
                .join(" ");
            Line {
                name,
                class,
                points,
                last: values.last().copied().unwrap_or(0),
            }
        })
        .collect();
    Chart {
        lines,
        max,
        seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(success: u64, sold_out: u64, coupon: Option<(i64, i64)>) -> Sample {
        Sample {
            answers: vec![("SUCCESS", success), ("SOLD_OUT", sold_out)],
            coupons: coupon
                .map(|stock| (CouponId::new(7).unwrap(), stock))
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn answers_per_second_are_the_differences_of_the_counts_over_the_time_between() {
        let history = History::default();
        let start = Instant::now();
        let at = |ms: u64| start + std::time::Duration::from_millis(ms);
        history.record_at(at(0), sample(0, 0, None));
        history.record_at(at(1_000), sample(10, 2, None));
        // Two seconds later: a refresh took none.
        history.record_at(at(3_000), sample(20, 78, None));
        let chart = history.answers();
        assert_eq!(chart.lines[0].last, 5, "admitted per second, over two");
        assert_eq!(chart.lines[1].last, 38, "refused per second, over two");
        assert_eq!(chart.lines[0].points.split(' ').count(), 2);
        assert_eq!(chart.max, 38);
        assert_eq!(
            history.last_second(),
            vec![("SUCCESS", 5), ("SOLD_OUT", 38)]
        );
    }

    #[test]
    fn a_coupon_without_gauges_has_no_stock_chart_and_the_newest_is_at_the_right() {
        let history = History::default();
        let coupon = CouponId::new(7).unwrap();
        assert!(history.stock(coupon).is_none());
        for _ in 0..KEPT + 5 {
            history.record(sample(0, 0, Some((3, 1))));
        }
        let chart = history.stock(coupon).unwrap();
        assert_eq!(chart.seconds, KEPT, "at most five minutes are kept");
        assert!(
            chart.lines[0].points.ends_with("600.0,0.0"),
            "{}",
            chart.lines[0].points
        );
        assert_eq!(chart.lines[1].last, 1);
        assert!(history.stock(CouponId::new(8).unwrap()).is_none());
        // Gone from the active coupons: the last reading stands.
        history.record(sample(0, 0, None));
        let chart = history.stock(coupon).unwrap();
        assert_eq!((chart.lines[0].last, chart.lines[1].last), (3, 1));
    }
}
