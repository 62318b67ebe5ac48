//! Text tables: kubectl's plain columns and calicoctl's bordered tables.

/// How a bordered table aligns a column's cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table: a header row and data rows of the same width.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and no rows.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        Table { headers: headers.into_iter().map(Into::into).collect(), rows: Vec::new() }
    }

    /// Adds a row.
    pub fn push<S: Into<String>>(&mut self, row: impl IntoIterator<Item = S>) {
        self.rows.push(row.into_iter().map(Into::into).collect());
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        widths
    }

    /// kubectl's layout: left-aligned columns separated by three spaces, no trailing blanks.
    pub fn plain(&self) -> String {
        let widths = self.widths();
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// calicoctl's layout: `+---+` borders, centred headers, cells aligned per `align` (left when absent).
    pub fn bordered(&self, align: &[Align]) -> String {
        let widths = self.widths();
        let rule: String =
            widths.iter().fold(String::from("+"), |acc, w| format!("{acc}{}+", "-".repeat(w + 2))) + "\n";
        let line = |cells: &[String], centred: bool| -> String {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w - cell.chars().count();
                let (left, right) = if centred {
                    (pad / 2, pad - pad / 2)
                } else if align.get(i) == Some(&Align::Right) {
                    (pad, 0)
                } else {
                    (0, pad)
                };
                s.push_str(&format!(" {}{cell}{} |", " ".repeat(left), " ".repeat(right)));
            }
            s + "\n"
        };
        let mut out = rule.clone();
        out.push_str(&line(&self.headers, true));
        out.push_str(&rule);
        for row in &self.rows {
            out.push_str(&line(row, false));
        }
        out.push_str(&rule);
        out
    }
}

/// `used (pct%)` of `total`, as `calicoctl ipam show` prints cells: `81 (16%)`.
pub fn count_with_percent(count: u128, total: u128) -> String {
    let pct = if total == 0 { 0 } else { ((count as f64) * 100.0 / (total as f64)).round() as u64 };
    format!("{count} ({pct}%)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(["NAME", "CIDR", "SELECTOR"]);
        t.push(["default-ipv4-ippool", "10.244.0.0/16", "all()"]);
        t.push(["b", "10.0.0.0/8", ""]);
        t
    }

    #[test]
    fn plain_layout() {
        assert_eq!(
            sample().plain(),
            "NAME                  CIDR            SELECTOR\n\
             default-ipv4-ippool   10.244.0.0/16   all()\n\
             b                     10.0.0.0/8\n"
        );
    }

    #[test]
    fn bordered_layout() {
        let mut t = Table::new(["PEER ADDRESS", "PEER TYPE", "STATE"]);
        t.push(["192.168.100.101", "node-to-node mesh", "up"]);
        assert_eq!(
            t.bordered(&[]),
            "+-----------------+-------------------+-------+\n\
             |  PEER ADDRESS   |     PEER TYPE     | STATE |\n\
             +-----------------+-------------------+-------+\n\
             | 192.168.100.101 | node-to-node mesh | up    |\n\
             +-----------------+-------------------+-------+\n"
        );
        let mut n = Table::new(["N"]);
        n.push(["12345"]);
        assert!(n.bordered(&[Align::Right]).contains("| 12345 |"));
        let mut n = Table::new(["TOTAL"]);
        n.push(["1"]);
        assert!(n.bordered(&[Align::Right]).contains("|     1 |"));
    }

    #[test]
    fn percentages() {
        assert_eq!(count_with_percent(81, 512), "81 (16%)");
        assert_eq!(count_with_percent(0, 64), "0 (0%)");
        assert_eq!(count_with_percent(64, 64), "64 (100%)");
        assert_eq!(count_with_percent(0, 0), "0 (0%)");
    }
}
