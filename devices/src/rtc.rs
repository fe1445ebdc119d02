//! The MC146818-style CMOS RTC at ports 0x70 (index) and 0x71 (data).
//!
//! Time registers are computed from the host's UTC clock at each read, in BCD and 24-hour
//! mode, with the update-in-progress bit always clear, so a guest can read the time in
//! one pass. Everything else is 128 bytes of plain CMOS memory.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;
use crate::counters::DeviceCounters;
use crate::fill_all_ones;

/// Number of CMOS bytes addressable through the index port.
const CMOS_SIZE: usize = 128;
/// Bit 7 of the index port masks NMIs on real hardware; we ignore it.
const INDEX_MASK: u8 = 0x7f;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status A: 32.768 kHz time base, 1024 Hz periodic rate, UIP (bit 7) clear.
pub const STATUS_A: u8 = 0x26;
/// Status B: 24-hour mode, BCD (DM bit clear), no interrupts enabled.
pub const STATUS_B: u8 = 0x02;
/// Status C: no interrupt flags pending.
pub const STATUS_C: u8 = 0x00;
/// Status D: VRT (valid RAM and time).
pub const STATUS_D: u8 = 0x80;

const SECS_PER_DAY: u64 = 86_400;

/// A UTC calendar date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    /// Full year, e.g. 2024.
    pub year: u64,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
    /// 0 = Sunday .. 6 = Saturday.
    pub weekday: u8,
}

/// Converts seconds since 1970-01-01T00:00:00Z to a proleptic Gregorian UTC date.
pub fn civil_from_unix(secs: u64) -> CivilTime {
    let days = secs / SECS_PER_DAY;
    let in_day = secs % SECS_PER_DAY;
    let (year, month, day) = civil_from_days(days);
    CivilTime {
        year,
        month,
        day,
        // All three are bounded far below 256 by the modulo above.
        hour: (in_day / 3600) as u8,
        minute: (in_day / 60 % 60) as u8,
        second: (in_day % 60) as u8,
        // 1970-01-01 was a Thursday (4).
        weekday: ((days + 4) % 7) as u8,
    }
}

/// Days since 1970-01-01 to (year, month, day).
///
/// Counts in 400-year eras (146097 days, the Gregorian cycle) of years that start on
/// March 1st, so the leap day falls at the very end of a year and month lengths follow
/// the regular 153-days-per-5-months pattern from March on.
fn civil_from_days(days: u64) -> (u64, u8, u8) {
    const DAYS_PER_ERA: u64 = 146_097;
    // Days from 0000-03-01 to 1970-01-01.
    const EPOCH_SHIFT: u64 = 719_468;
    let shifted = days + EPOCH_SHIFT;
    let era = shifted / DAYS_PER_ERA;
    let day_of_era = shifted % DAYS_PER_ERA;
    // Drop one day every 4 years, add it back every 100, drop it again at 400 (the era's
    // last day) so that dividing by 365 yields the year within the era.
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524
        - day_of_era / (DAYS_PER_ERA - 1))
        / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Month 0 is March; each 5 months take 153 days.
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    // month is 1..=12 and day 1..=31 by construction.
    (year, month as u8, day as u8)
}

/// Two decimal digits in BCD; values of 100 and more keep their last two digits.
fn to_bcd(value: u64) -> u8 {
    let v = (value % 100) as u8;
    ((v / 10) << 4) | (v % 10)
}

type Clock = Box<dyn Fn() -> u64 + Send>;

fn host_utc_seconds() -> u64 {
    // A host clock set before 1970 reads as the epoch rather than failing the guest.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The CMOS RTC device.
pub struct CmosRtc {
    index: u8,
    cmos: [u8; CMOS_SIZE],
    clock: Clock,
    counters: Arc<DeviceCounters>,
}

impl Default for CmosRtc {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CmosRtc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CmosRtc")
            .field("index", &self.index)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl CmosRtc {
    /// An RTC that reads the host's UTC clock.
    pub fn new() -> Self {
        Self::with_clock(Box::new(host_utc_seconds))
    }

    /// An RTC whose time comes from `clock`, in seconds since the Unix epoch.
    pub fn with_clock(clock: Box<dyn Fn() -> u64 + Send>) -> Self {
        Self {
            index: 0,
            cmos: [0; CMOS_SIZE],
            clock,
            counters: Arc::default(),
        }
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    /// The register at `index` as the guest reads it.
    fn register(&self, index: u8) -> u8 {
        let time = || civil_from_unix((self.clock)());
        match index {
            REG_SECONDS => to_bcd(time().second.into()),
            REG_MINUTES => to_bcd(time().minute.into()),
            REG_HOURS => to_bcd(time().hour.into()),
            REG_WEEKDAY => to_bcd(u64::from(time().weekday) + 1),
            REG_DAY => to_bcd(time().day.into()),
            REG_MONTH => to_bcd(time().month.into()),
            REG_YEAR => to_bcd(time().year),
            REG_CENTURY => to_bcd(time().year / 100),
            REG_STATUS_A => STATUS_A,
            REG_STATUS_B => STATUS_B,
            REG_STATUS_C => STATUS_C,
            REG_STATUS_D => STATUS_D,
            other => self.cmos[usize::from(other & INDEX_MASK)],
        }
    }

    /// Whether a data write to `index` is dropped: the clock and status registers are
    /// owned by the host (setting the guest's clock is not supported).
    fn read_only(index: u8) -> bool {
        matches!(
            index,
            REG_SECONDS
                | REG_MINUTES
                | REG_HOURS
                | REG_WEEKDAY
                | REG_DAY
                | REG_MONTH
                | REG_YEAR
                | REG_STATUS_A
                | REG_STATUS_B
                | REG_STATUS_C
                | REG_STATUS_D
                | REG_CENTURY
        )
    }
}

impl BusDevice for CmosRtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.read();
        match (offset, data) {
            (1, [byte]) => *byte = self.register(self.index),
            // The index port is write-only; everything else is not ours to answer.
            (_, data) => {
                self.counters.unknown();
                fill_all_ones(data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.counters.write();
        match (offset, data) {
            (0, &[value]) => self.index = value & INDEX_MASK,
            (1, &[value]) => {
                if !Self::read_only(self.index) {
                    self.cmos[usize::from(self.index & INDEX_MASK)] = value;
                }
            }
            _ => self.counters.unknown(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::ODD_SIZES;

    fn civil(y: u64, mo: u8, d: u8, h: u8, mi: u8, s: u8, wd: u8) -> CivilTime {
        CivilTime {
            year: y,
            month: mo,
            day: d,
            hour: h,
            minute: mi,
            second: s,
            weekday: wd,
        }
    }

    #[test]
    fn known_epochs_convert_to_their_dates() {
        // (seconds, expected) from published Unix-time tables.
        let cases = [
            (0, civil(1970, 1, 1, 0, 0, 0, 4)),
            (951_782_400, civil(2000, 2, 29, 0, 0, 0, 2)),
            (946_684_800, civil(2000, 1, 1, 0, 0, 0, 6)),
            (1_709_164_800, civil(2024, 2, 29, 0, 0, 0, 4)),
            (1_709_251_199, civil(2024, 2, 29, 23, 59, 59, 4)),
            (2_147_483_647, civil(2038, 1, 19, 3, 14, 7, 2)),
            (4_102_444_800, civil(2100, 1, 1, 0, 0, 0, 5)),
            (4_107_542_400, civil(2100, 3, 1, 0, 0, 0, 1)), // 2100 is not a leap year
            (253_402_300_799, civil(9999, 12, 31, 23, 59, 59, 5)),
        ];
        for (secs, expected) in cases {
            assert_eq!(civil_from_unix(secs), expected, "{secs}");
        }
    }

    /// Independent reference: walk the calendar one day at a time with the textbook leap
    /// rule and check every day from 1970 to 2500 against the closed-form conversion.
    #[test]
    fn every_day_for_five_centuries_matches_a_calendar_walk() {
        let leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_len = |y: u64, m: u8| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let (mut y, mut m, mut d, mut wd) = (1970u64, 1u8, 1u8, 4u8);
        let mut days = 0u64;
        while y < 2500 {
            let t = civil_from_unix(days * SECS_PER_DAY + 45_296); // 12:34:56
            assert_eq!(t, civil(y, m, d, 12, 34, 56, wd), "day {days}");
            days += 1;
            wd = (wd + 1) % 7;
            d += 1;
            if d > month_len(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn huge_clock_values_do_not_overflow() {
        let t = civil_from_unix(u64::MAX);
        assert!(t.year > 9999);
        assert!((1..=12).contains(&t.month) && (1..=31).contains(&t.day));
    }

    #[test]
    fn bcd_encoding() {
        assert_eq!(to_bcd(0), 0x00);
        assert_eq!(to_bcd(9), 0x09);
        assert_eq!(to_bcd(10), 0x10);
        assert_eq!(to_bcd(59), 0x59);
        assert_eq!(to_bcd(2024), 0x24);
        assert_eq!(to_bcd(20), 0x20);
    }

    fn read_reg(rtc: &mut CmosRtc, index: u8) -> u8 {
        rtc.write(0, &[index]);
        let mut b = [0u8];
        rtc.read(1, &mut b);
        b[0]
    }

    fn rtc_at(secs: u64) -> CmosRtc {
        CmosRtc::with_clock(Box::new(move || secs))
    }

    #[test]
    fn time_registers_read_in_bcd() {
        // 2038-01-19 03:14:07 UTC, a Tuesday.
        let mut rtc = rtc_at(2_147_483_647);
        let regs: Vec<u8> = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32]
            .iter()
            .map(|&i| read_reg(&mut rtc, i))
            .collect();
        assert_eq!(regs, vec![0x07, 0x14, 0x03, 0x03, 0x19, 0x01, 0x38, 0x20]);

        // 2024-02-29 23:59:59, a Thursday: 24-hour mode shows 23.
        let mut rtc = rtc_at(1_709_251_199);
        assert_eq!(read_reg(&mut rtc, 0x04), 0x23);
        assert_eq!(read_reg(&mut rtc, 0x06), 0x05);
        assert_eq!(read_reg(&mut rtc, 0x07), 0x29);
        assert_eq!(read_reg(&mut rtc, 0x08), 0x02);
        assert_eq!(read_reg(&mut rtc, 0x09), 0x24);
    }

    #[test]
    fn time_follows_the_clock_between_reads() {
        let now = Arc::new(std::sync::atomic::AtomicU64::new(946_684_799));
        let clock = now.clone();
        let mut rtc = CmosRtc::with_clock(Box::new(move || {
            clock.load(std::sync::atomic::Ordering::Relaxed)
        }));
        assert_eq!(read_reg(&mut rtc, 0x09), 0x99);
        assert_eq!(read_reg(&mut rtc, 0x32), 0x19);
        now.store(946_684_800, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(read_reg(&mut rtc, 0x09), 0x00);
        assert_eq!(read_reg(&mut rtc, 0x32), 0x20);
    }

    #[test]
    fn host_clock_reads_a_plausible_date() {
        let mut rtc = CmosRtc::new();
        let century = read_reg(&mut rtc, 0x32);
        assert!(century >= 0x20, "century {century:#x}");
        let month = read_reg(&mut rtc, 0x08);
        assert!((0x01..=0x12).contains(&month) && month & 0x0f <= 9);
    }

    #[test]
    fn status_registers_are_fixed_and_ignore_writes() {
        let mut rtc = rtc_at(0);
        for (index, value) in [(0x0a, 0x26), (0x0b, 0x02), (0x0c, 0x00), (0x0d, 0x80)] {
            assert_eq!(read_reg(&mut rtc, index), value);
            rtc.write(1, &[0xff]);
            assert_eq!(
                read_reg(&mut rtc, index),
                value,
                "after a write to {index:#x}"
            );
        }
        assert_eq!(read_reg(&mut rtc, 0x0a) & 0x80, 0, "UIP clear");
    }

    #[test]
    fn time_writes_are_ignored_and_other_bytes_stored() {
        let mut rtc = rtc_at(1_709_164_800);
        rtc.write(0, &[0x09]);
        rtc.write(1, &[0x55]);
        assert_eq!(read_reg(&mut rtc, 0x09), 0x24);
        for index in [0x01u8, 0x0e, 0x0f, 0x31, 0x33, 0x7f] {
            rtc.write(0, &[index]);
            rtc.write(1, &[index ^ 0xa5]);
        }
        for index in [0x01u8, 0x0e, 0x0f, 0x31, 0x33, 0x7f] {
            assert_eq!(read_reg(&mut rtc, index), index ^ 0xa5, "{index:#x}");
        }
    }

    #[test]
    fn nmi_mask_bit_of_the_index_is_ignored() {
        let mut rtc = rtc_at(2_147_483_647);
        assert_eq!(read_reg(&mut rtc, 0x80), 0x07, "0x80 selects seconds");
        assert_eq!(read_reg(&mut rtc, 0x8a), STATUS_A);
        rtc.write(0, &[0x80 | 0x40]);
        rtc.write(1, &[0x77]);
        assert_eq!(read_reg(&mut rtc, 0x40), 0x77);
    }

    #[test]
    fn odd_accesses_read_all_ones_and_change_nothing() {
        let mut rtc = rtc_at(0);
        rtc.write(0, &[0x10]);
        for size in ODD_SIZES.into_iter().filter(|&n| n != 1) {
            for offset in [0u64, 1, 2, u64::MAX] {
                let mut data = vec![0u8; size];
                rtc.read(offset, &mut data);
                assert!(data.iter().all(|&b| b == 0xff));
                rtc.write(offset, &vec![0x42; size]);
            }
        }
        let mut b = [0u8];
        rtc.read(0, &mut b);
        assert_eq!(b, [0xff], "the index port is write-only");
        rtc.write(2, &[0x42]);
        assert_eq!(read_reg(&mut rtc, 0x10), 0x00, "nothing was stored");
        let c = rtc.counters().snapshot();
        assert_eq!(c.unknown_accesses, (ODD_SIZES.len() as u64 - 1) * 8 + 2);
    }
}
