//! Sets of host CPUs and the kernel's CPU list syntax ("0-3,8,10-11").

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The highest CPU number a list may name. Linux builds for x86_64 allow at most 8192 CPUs;
/// the cap keeps a typo such as "0-4000000000" from allocating gigabytes.
pub const MAX_CPU: u32 = 8191;

/// Errors from parsing a CPU list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// An element between commas is empty ("1,,2" or a trailing comma).
    #[error("CPU list {list:?} has an empty element: separate CPU numbers and ranges with single commas")]
    EmptyElement {
        /// The whole list as given.
        list: String,
    },
    /// An element is not a number or a range of numbers.
    #[error("CPU list {list:?}: {element:?} is not a CPU number or a range such as 4-7")]
    NotANumber {
        /// The whole list as given.
        list: String,
        /// The offending element.
        element: String,
    },
    /// A range goes downwards.
    #[error(
        "CPU list {list:?}: range {element:?} ends before it starts: write the lower CPU first"
    )]
    ReversedRange {
        /// The whole list as given.
        list: String,
        /// The offending element.
        element: String,
    },
    /// A CPU number is larger than any host can have.
    #[error("CPU list {list:?}: CPU {cpu} is above the limit of {MAX_CPU}: check the number")]
    TooLarge {
        /// The whole list as given.
        list: String,
        /// The offending CPU number.
        cpu: u64,
    },
}

/// A set of host CPUs, kept sorted.
///
/// Serializes as a sorted array of CPU numbers; displays in the kernel's list syntax
/// ("0-3,8,10-11"), which [`CpuSet::parse`] reads back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct CpuSet(BTreeSet<u32>);

impl CpuSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the kernel's CPU list syntax: comma-separated CPU numbers and inclusive ranges,
    /// e.g. "0-3,8,10-11". An empty string (or only whitespace, as in the `cpulist` of a node
    /// without CPUs) is the empty set.
    pub fn parse(list: &str) -> Result<Self, CpuListError> {
        Ok(parse_cpu_list_ordered(list)?.into_iter().collect())
    }

    /// Adds one CPU.
    pub fn insert(&mut self, cpu: u32) -> bool {
        self.0.insert(cpu)
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    /// How many CPUs the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// The highest CPU in the set, if any.
    pub fn last(&self) -> Option<u32> {
        self.0.last().copied()
    }

    /// CPUs in both sets.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.intersection(&other.0).copied().collect())
    }

    /// CPUs in either set.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.union(&other.0).copied().collect())
    }

    /// Whether every CPU of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        CpuSet(iter.into_iter().collect())
    }
}

impl FromStr for CpuSet {
    type Err = CpuListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for CpuSet {
    /// Writes the kernel's compact list syntax: "0-3,8,10-11"; the empty set writes nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cpus = self.iter().peekable();
        let mut first = true;
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end += 1;
                cpus.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

/// Parses a CPU list keeping the order and repetitions in which CPUs are written
/// ("5,4" gives `[5, 4]`; "4-5" gives `[4, 5]`). [`CpuSet::parse`] is the sorted, de-duplicated
/// form; this one serves `pin=` lists, where the n-th CPU goes to the n-th vCPU.
pub fn parse_cpu_list_ordered(list: &str) -> Result<Vec<u32>, CpuListError> {
    let trimmed = list.trim();
    let mut cpus = Vec::new();
    if trimmed.is_empty() {
        return Ok(cpus);
    }
    for element in trimmed.split(',') {
        let element = element.trim();
        if element.is_empty() {
            return Err(CpuListError::EmptyElement {
                list: list.to_string(),
            });
        }
        let (first, last) = match element.split_once('-') {
            Some((a, b)) => (parse_cpu(list, element, a)?, parse_cpu(list, element, b)?),
            None => {
                let cpu = parse_cpu(list, element, element)?;
                (cpu, cpu)
            }
        };
        if last < first {
            return Err(CpuListError::ReversedRange {
                list: list.to_string(),
                element: element.to_string(),
            });
        }
        cpus.extend(first..=last);
    }
    Ok(cpus)
}

fn parse_cpu(list: &str, element: &str, number: &str) -> Result<u32, CpuListError> {
    let number = number.trim();
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CpuListError::NotANumber {
            list: list.to_string(),
            element: element.to_string(),
        });
    }
    let too_large = |cpu: u64| CpuListError::TooLarge {
        list: list.to_string(),
        cpu,
    };
    let value: u64 = number.parse().map_err(|_| too_large(u64::MAX))?;
    if value > u64::from(MAX_CPU) {
        return Err(too_large(value));
    }
    u32::try_from(value).map_err(|_| too_large(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_singles() {
        let set = CpuSet::parse("0-3,8,10-11\n").unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(set.len(), 7);
        assert!(set.contains(8) && !set.contains(9));
    }

    #[test]
    fn display_is_compact_and_round_trips() {
        for list in ["0-3,8,10-11", "5", "0,2,4", "1-2", ""] {
            let set = CpuSet::parse(list).unwrap();
            assert_eq!(set.to_string(), list);
        }
        let set: CpuSet = [7, 1, 2, 3, 9].into_iter().collect();
        assert_eq!(set.to_string(), "1-3,7,9");
    }

    #[test]
    fn empty_and_whitespace_are_the_empty_set() {
        assert!(CpuSet::parse("").unwrap().is_empty());
        assert!(CpuSet::parse(" \n").unwrap().is_empty());
    }

    #[test]
    fn ordered_keeps_written_order() {
        assert_eq!(parse_cpu_list_ordered("5,4").unwrap(), vec![5, 4]);
        assert_eq!(parse_cpu_list_ordered("6-7,2").unwrap(), vec![6, 7, 2]);
        assert_eq!(parse_cpu_list_ordered("1,1").unwrap(), vec![1, 1]);
    }

    #[test]
    fn bad_lists_name_the_bad_element() {
        let err = CpuSet::parse("1,,2").unwrap_err();
        assert!(matches!(err, CpuListError::EmptyElement { .. }), "{err}");
        let err = CpuSet::parse("0-3,x").unwrap_err();
        assert_eq!(
            err,
            CpuListError::NotANumber {
                list: "0-3,x".into(),
                element: "x".into()
            }
        );
        assert!(err.to_string().contains("\"x\""));
        let err = CpuSet::parse("5-3").unwrap_err();
        assert!(matches!(err, CpuListError::ReversedRange { ref element, .. } if element == "5-3"));
        assert!(matches!(
            CpuSet::parse("0-4000000000").unwrap_err(),
            CpuListError::TooLarge {
                cpu: 4_000_000_000,
                ..
            }
        ));
        assert!(matches!(
            CpuSet::parse("99999999999999999999999").unwrap_err(),
            CpuListError::TooLarge { .. }
        ));
        assert!(matches!(
            CpuSet::parse("-1").unwrap_err(),
            CpuListError::NotANumber { .. }
        ));
        assert!(matches!(
            CpuSet::parse("1-").unwrap_err(),
            CpuListError::NotANumber { .. }
        ));
        assert!(matches!(
            CpuSet::parse("3,").unwrap_err(),
            CpuListError::EmptyElement { .. }
        ));
    }

    #[test]
    fn set_operations() {
        let a = CpuSet::parse("0-3").unwrap();
        let b = CpuSet::parse("2-5").unwrap();
        assert_eq!(a.intersection(&b).to_string(), "2-3");
        assert_eq!(a.union(&b).to_string(), "0-5");
        assert!(CpuSet::parse("1-2").unwrap().is_subset(&a));
        assert!(!b.is_subset(&a));
        assert_eq!(b.last(), Some(5));
    }
}
