//! Reading what `xdprobe` printed: its `--json` lines by type, and the end of a log for
//! failure messages.

use serde_json::Value;

/// The JSON objects among the lines of `log` (other lines are skipped).
pub fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The objects whose `type` is `kind` (`state`, `window`, `summary`).
pub fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["type"] == kind).collect()
}

/// The last `n` lines of `log`.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_picked_and_sorted_by_type() {
        let log = "2026 INFO probing\n{\"type\":\"state\",\"host\":\"192.0.2.1\"}\n{broken\n{\"type\":\"summary\"}\n";
        let lines = json_lines(log);
        assert_eq!(lines.len(), 2);
        assert_eq!(of_type(&lines, "state")[0]["host"], "192.0.2.1");
        assert_eq!(of_type(&lines, "window").len(), 0);
        assert_eq!(tail(log, 2), "{broken\n{\"type\":\"summary\"}");
        assert_eq!(tail("a", 5), "a");
    }
}
