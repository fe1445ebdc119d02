//! The L1 guest's `/init`: named steps between marker lines on the serial console, each with a
//! time limit, then power-off; and reading the steps back out of the serial log.

use super::{NestedError, Result};

const BEGIN: &str = "@@nested begin ";
const END: &str = "@@nested end ";
const TIMEOUT: &str = "@@nested timeout ";
/// The line `/init` prints after the last step, just before it powers the guest off.
pub const DONE_MARKER: &str = "@@nested done";
/// Where `/init` finds the script of step `<name>`: `<STEP_DIR>/<name>.sh`.
pub const STEP_DIR: &str = "/nested/steps";

/// One named shell script run by the L1 `/init`, with its output framed by markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-40 characters from `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// A busybox `sh` script; stdout and stderr both go to the serial console.
    pub script: String,
    /// Seconds after which the step's whole process group is killed (rc 137).
    pub timeout_secs: u32,
}

impl Step {
    /// A step with a 60 s limit.
    pub fn new(name: &str, script: &str) -> Step {
        Step {
            name: name.to_string(),
            script: script.to_string(),
            timeout_secs: 60,
        }
    }

    /// The same step with another time limit.
    pub fn with_timeout(mut self, secs: u32) -> Step {
        self.timeout_secs = secs.max(1);
        self
    }

    /// The guest path of this step's script.
    pub fn guest_path(&self) -> String {
        format!("{STEP_DIR}/{}.sh", self.name)
    }
}

fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Checks that every step name is usable in markers and appears once.
pub(crate) fn check_names(steps: &[Step]) -> Result<()> {
    for (i, step) in steps.iter().enumerate() {
        if !valid_name(&step.name) || steps[..i].iter().any(|s| s.name == step.name) {
            return Err(NestedError::InvalidStepName {
                name: step.name.clone(),
            });
        }
    }
    Ok(())
}

const PREAMBLE: &str = r#"#!/bin/sh
# L1 /init written by the edgevisor test harness (tests/src/nested/script.rs).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
uptime_now() { read -r up rest < /proc/uptime; echo "$up"; }
run_step() {
    name=$1
    limit=$2
    echo "@@nested begin $name t=$(uptime_now)"
    # Each step leads its own process group so the watchdog can kill all of it.
    setsid sh "/nested/steps/$name.sh" </dev/null 2>&1 &
    pid=$!
    setsid sh -c "sleep $limit; echo '@@nested timeout $name after $limit s'; kill -KILL -$pid" </dev/null &
    dog=$!
    wait $pid
    rc=$?
    kill -KILL -$dog 2>/dev/null
    wait $dog 2>/dev/null
    echo "@@nested end $name rc=$rc t=$(uptime_now)"
}
"#;

/// The `/init` script that runs `steps` in order (their scripts must be at
/// [`Step::guest_path`]), prints [`DONE_MARKER`] and powers off.
pub fn l1_init_script(steps: &[Step]) -> Result<String> {
    check_names(steps)?;
    let mut init = String::from(PREAMBLE);
    for step in steps {
        init.push_str(&format!(
            "run_step {} {}\n",
            step.name,
            step.timeout_secs.max(1)
        ));
    }
    init.push_str(&format!("echo \"{DONE_MARKER}\"\npoweroff -f\nreboot -f\n"));
    Ok(init)
}

/// What one step printed, read back from the serial log.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// The step's name.
    pub name: String,
    /// Everything between its begin and end markers (carriage returns removed).
    pub output: String,
    /// The exit status of the step's script (137 when the watchdog killed it).
    pub rc: i32,
    /// Whether the step hit its time limit.
    pub timed_out: bool,
    /// Guest uptime between the markers, in seconds.
    pub seconds: Option<f64>,
}

impl StepOutput {
    /// Whether some line of the output contains `needle`.
    pub fn has_line_containing(&self, needle: &str) -> bool {
        self.output.lines().any(|l| l.contains(needle))
    }
}

/// The value of `key=` in a marker line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// The output of step `name` in `log`, if both its markers are there.
pub(crate) fn parse_step(log: &str, name: &str) -> Option<StepOutput> {
    let begin = format!("{BEGIN}{name} ");
    let end = format!("{END}{name} ");
    let timeout = format!("{TIMEOUT}{name} ");
    let mut lines = log.lines().map(|l| l.trim_end_matches('\r'));
    let start_line = lines.by_ref().find(|l| l.contains(&begin))?;
    let started: Option<f64> = field(start_line, "t").and_then(|t| t.parse().ok());
    let mut output = String::new();
    let mut timed_out = false;
    for line in lines {
        if line.contains(&end) {
            let rc = field(line, "rc")?.parse().ok()?;
            let ended: Option<f64> = field(line, "t").and_then(|t| t.parse().ok());
            let seconds = started.zip(ended).map(|(a, b)| b - a);
            return Some(StepOutput {
                name: name.to_string(),
                output,
                rc,
                timed_out,
                seconds,
            });
        }
        if line.contains(&timeout) {
            timed_out = true;
        }
        output.push_str(line);
        output.push('\n');
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_cut_out_of_the_log_with_rc_and_duration() {
        let log = "noise\r\n@@nested begin a t=1.50\r\nhello\r\n@@nested end a rc=3 t=2.25\r\n\
                   @@nested begin ab t=3.00\r\nx\r\n@@nested timeout ab after 5 s\r\n\
                   @@nested end ab rc=137 t=8.00\r\n@@nested done\r\n";
        let a = parse_step(log, "a").expect("step a");
        assert_eq!(a.output, "hello\n");
        assert_eq!(a.rc, 3);
        assert!(!a.timed_out);
        assert_eq!(a.seconds, Some(0.75));
        let ab = parse_step(log, "ab").expect("step ab");
        assert_eq!(ab.rc, 137);
        assert!(ab.timed_out);
        assert!(ab.has_line_containing("x"));
        assert_eq!(parse_step(log, "b"), None);
    }

    #[test]
    fn a_step_without_its_end_marker_is_missing() {
        let log = "@@nested begin a t=1.0\nstill running\n";
        assert_eq!(parse_step(log, "a"), None);
    }

    #[test]
    fn init_runs_every_step_in_order_then_powers_off() {
        let steps = [
            Step::new("one", "true"),
            Step::new("two", "false").with_timeout(7),
        ];
        let init = l1_init_script(&steps).expect("valid steps");
        let one = init.find("run_step one 60\n").expect("step one");
        let two = init.find("run_step two 7\n").expect("step two");
        let done = init.find(DONE_MARKER).expect("done marker");
        let off = init.find("poweroff -f").expect("power-off");
        assert!(one < two && two < done && done < off, "{init}");
        assert_eq!(steps[1].guest_path(), "/nested/steps/two.sh");
    }

    #[test]
    fn bad_or_repeated_step_names_are_refused() {
        for bad in ["", "has space", "semi;colon", "a/b"] {
            assert!(
                l1_init_script(&[Step::new(bad, "true")]).is_err(),
                "{bad:?}"
            );
        }
        let twice = [Step::new("x", "true"), Step::new("x", "true")];
        assert!(l1_init_script(&twice).is_err());
    }
}
