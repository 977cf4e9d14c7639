//! A fixed-bin histogram of document scores, kept and discarded stacked, written as a
//! small hand-made SVG (no plotting dependency needed for bars and a few labels).

use std::fmt::Write;

/// Counts of kept and discarded documents per score bin over `[lo, hi]` (scores outside
/// go to the edge bins).
#[derive(Clone, Debug)]
pub struct Histogram {
    lo: f64,
    hi: f64,
    kept: Vec<u64>,
    discarded: Vec<u64>,
}

impl Histogram {
    /// `bins` equal bins over `[lo, hi]` (widened if empty).
    pub fn new(lo: f64, hi: f64, bins: usize) -> Histogram {
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, lo + 0.5)
        };
        Histogram {
            lo,
            hi,
            kept: vec![0; bins],
            discarded: vec![0; bins],
        }
    }

    /// Counts one score.
    pub fn add(&mut self, score: f64, kept: bool) {
        let n = self.kept.len();
        let t = (score - self.lo) / (self.hi - self.lo);
        let i = ((t * n as f64).floor().max(0.0) as usize).min(n - 1);
        if kept {
            self.kept[i] += 1;
        } else {
            self.discarded[i] += 1;
        }
    }

    /// The SVG document; `threshold` draws a vertical line (dataset-level discard).
    pub fn svg(&self, title: &str, threshold: Option<f64>) -> String {
        let (w, h, left, right, top, bottom) = (720.0, 400.0, 70.0, 20.0, 40.0, 50.0);
        let (pw, ph) = (w - left - right, h - top - bottom);
        let n = self.kept.len();
        let max = (0..n)
            .map(|i| self.kept[i] + self.discarded[i])
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            w / 2.0,
            escape(title)
        );
        let bw = pw / n as f64;
        for i in 0..n {
            let x = left + i as f64 * bw;
            let hk = ph * self.kept[i] as f64 / max;
            let hd = ph * self.discarded[i] as f64 / max;
            if hd > 0.0 {
                let _ = writeln!(
                    s,
                    r##"<rect x="{x:.2}" y="{:.2}" width="{:.2}" height="{hd:.2}" fill="#c0504d"/>"##,
                    top + ph - hd,
                    bw * 0.95
                );
            }
            if hk > 0.0 {
                let _ = writeln!(
                    s,
                    r##"<rect x="{x:.2}" y="{:.2}" width="{:.2}" height="{hk:.2}" fill="#4f81bd"/>"##,
                    top + ph - hd - hk,
                    bw * 0.95
                );
            }
        }
        // Axes, ticks and labels.
        let _ = writeln!(
            s,
            r#"<path d="M{left} {top} V{} H{}" stroke="black" fill="none"/>"#,
            top + ph,
            left + pw
        );
        for k in 0..=4 {
            let f = k as f64 / 4.0;
            let x = left + f * pw;
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{:.3}</text>"#,
                top + ph + 18.0,
                self.lo + f * (self.hi - self.lo)
            );
            let y = top + ph - f * ph;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}</text>"#,
                left - 6.0,
                y + 4.0,
                f * max
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">document score</text>"#,
            left + pw / 2.0,
            h - 10.0
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">documents</text>"#,
            top + ph / 2.0,
            top + ph / 2.0
        );
        if let Some(t) = threshold {
            let x = left + ((t - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0) * pw;
            let _ = writeln!(
                s,
                r#"<line x1="{x:.2}" y1="{top}" x2="{x:.2}" y2="{:.2}" stroke="black" stroke-dasharray="4 3"/>"#,
                top + ph
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{top}" width="12" height="12" fill="#4f81bd"/><text x="{:.1}" y="{:.1}">kept</text>"##,
            left + pw - 110.0,
            left + pw - 93.0,
            top + 10.0
        );
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="#c0504d"/><text x="{:.1}" y="{:.1}">discarded</text>"##,
            left + pw - 110.0,
            top + 18.0,
            left + pw - 93.0,
            top + 28.0
        );
        s.push_str("</svg>\n");
        s
    }
}

pub(crate) fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_bins_and_edges() {
        let mut h = Histogram::new(0.0, 1.0, 4);
        for (s, k) in [
            (-5.0, true),
            (0.1, false),
            (0.3, true),
            (0.99, true),
            (7.0, false),
        ] {
            h.add(s, k);
        }
        assert_eq!(h.kept, vec![1, 1, 0, 1]);
        assert_eq!(h.discarded, vec![1, 0, 0, 1]);
        assert!(h.svg("t", Some(0.5)).contains("<line"));
    }
}
