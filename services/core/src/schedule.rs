//! When periodic schedules fire: fixed intervals, cron expressions in a time
//! zone (DST as Vixie cron: a time skipped by spring-forward fires right
//! after the gap, a time repeated by fall-back fires once), and solar events
//! at a place (as Celery's `solar`).

use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use sunrise::{Coordinates, DawnType, SolarDay, SolarEvent};

use conveyor_api::pb;

use crate::error::{ConveyorError, Result};
use crate::time::duration_ms;

/// Shortest interval a schedule may have.
pub const MIN_INTERVAL_MS: i64 = 1000;

/// A validated rule.
#[derive(Debug, Clone)]
pub enum Rule {
    /// Every `every_ms`, counted from the schedule's anchor.
    Interval {
        /// Period, milliseconds.
        every_ms: i64,
    },
    /// A cron expression (5 fields, or 6 with seconds) evaluated in a zone.
    Cron {
        /// The parsed expression.
        cron: Box<Cron>,
        /// The zone its wall-clock times are in.
        zone: Tz,
    },
    /// A solar event at a place.
    Solar {
        /// Which event.
        event: pb::SolarEvent,
        /// Where.
        coordinates: Coordinates,
    },
}

fn to_utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Rule {
    /// Validates the rule of `schedule`; errors name the field under `prefix`.
    pub fn from_pb(rule: Option<&pb::schedule::Rule>, prefix: &str) -> Result<Self> {
        match rule {
            None => Err(ConveyorError::invalid(
                format!("{prefix}.rule"),
                "one of interval, cron or solar is required",
            )),
            Some(pb::schedule::Rule::Interval(interval)) => {
                let every_ms = interval.every.as_ref().and_then(duration_ms).unwrap_or(0);
                if every_ms < MIN_INTERVAL_MS {
                    return Err(ConveyorError::invalid(
                        format!("{prefix}.interval.every"),
                        format!("must be at least {MIN_INTERVAL_MS} ms"),
                    ));
                }
                Ok(Self::Interval { every_ms })
            }
            Some(pb::schedule::Rule::Cron(cron)) => {
                // croner also takes a 7th (year) field; the contract is
                // 5 fields, or 6 with seconds first.
                let fields = cron.expression.split_whitespace().count();
                if !cron.expression.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
                    return Err(ConveyorError::invalid(
                        format!("{prefix}.cron.expression"),
                        format!(
                            "{:?} has {fields} fields: give 5 (minute hour day month weekday) \
                             or 6 (seconds first)",
                            cron.expression
                        ),
                    ));
                }
                // An empty list item (a lone `,`, `1,,2` aside) leaves a field
                // that matches nothing, and the cron library then searches
                // thousands of years for a match (seconds of CPU, found by
                // fuzzing): refuse it here.
                if let Some((index, field)) = cron
                    .expression
                    .split_whitespace()
                    .enumerate()
                    .find(|(_, field)| field.split(',').all(str::is_empty))
                {
                    return Err(ConveyorError::invalid(
                        format!("{prefix}.cron.expression"),
                        format!(
                            "{:?}: field {} ({field:?}) lists no value",
                            cron.expression,
                            index + 1
                        ),
                    ));
                }
                let parsed = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(&cron.expression)
                    .map_err(|error| {
                        ConveyorError::invalid(
                            format!("{prefix}.cron.expression"),
                            error.to_string(),
                        )
                    })?;
                let zone_name = if cron.time_zone.is_empty() {
                    "UTC"
                } else {
                    cron.time_zone.as_str()
                };
                let zone = Tz::from_str(zone_name).map_err(|_| {
                    ConveyorError::invalid(
                        format!("{prefix}.cron.time_zone"),
                        format!("{zone_name:?} is not an IANA time zone (e.g. Europe/Berlin)"),
                    )
                })?;
                Ok(Self::Cron {
                    cron: Box::new(parsed),
                    zone,
                })
            }
            Some(pb::schedule::Rule::Solar(solar)) => {
                let event =
                    pb::SolarEvent::try_from(solar.event).unwrap_or(pb::SolarEvent::Unspecified);
                if event == pb::SolarEvent::Unspecified {
                    return Err(ConveyorError::invalid(
                        format!("{prefix}.solar.event"),
                        "is required",
                    ));
                }
                if !(-90.0..=90.0).contains(&solar.latitude) {
                    return Err(ConveyorError::invalid(
                        format!("{prefix}.solar.latitude"),
                        "must be between -90 and 90",
                    ));
                }
                if !(-180.0..=180.0).contains(&solar.longitude) {
                    return Err(ConveyorError::invalid(
                        format!("{prefix}.solar.longitude"),
                        "must be between -180 and 180",
                    ));
                }
                let coordinates =
                    Coordinates::new(solar.latitude, solar.longitude).ok_or_else(|| {
                        ConveyorError::invalid(format!("{prefix}.solar"), "not a valid place")
                    })?;
                Ok(Self::Solar { event, coordinates })
            }
        }
    }

    /// The first firing strictly after `after_ms`; intervals count from
    /// `anchor_ms`. `None` when the rule never fires again.
    pub fn next_after(&self, after_ms: i64, anchor_ms: i64) -> Option<i64> {
        match self {
            Self::Interval { every_ms } => {
                if after_ms < anchor_ms {
                    return Some(anchor_ms);
                }
                let periods = (after_ms - anchor_ms) / every_ms + 1;
                Some(anchor_ms + periods * every_ms)
            }
            Self::Cron { cron, zone } => {
                let local = to_utc(after_ms).with_timezone(zone);
                let next = cron.find_next_occurrence(&local, false).ok()?;
                Some(next.timestamp_millis())
            }
            Self::Solar { event, coordinates } => {
                let start = to_utc(after_ms).date_naive() - ChronoDuration::days(1);
                // Polar day or night can hide an event for months; look a year ahead.
                (0..400)
                    .filter_map(|offset| {
                        solar_event(*event, *coordinates, start + ChronoDuration::days(offset))
                    })
                    .map(|at| at.timestamp_millis())
                    .find(|at| *at > after_ms)
            }
        }
    }
}

/// The time of `event` on `date` (UTC date) at `coordinates`, if it happens.
pub fn solar_event(
    event: pb::SolarEvent,
    coordinates: Coordinates,
    date: NaiveDate,
) -> Option<DateTime<Utc>> {
    let day = SolarDay::new(coordinates, date);
    let time = |event: SolarEvent| day.event_time(event);
    match event {
        pb::SolarEvent::Unspecified => None,
        pb::SolarEvent::Sunrise => time(SolarEvent::Sunrise),
        pb::SolarEvent::Sunset => time(SolarEvent::Sunset),
        pb::SolarEvent::SolarNoon => {
            // Transit: halfway between sunrise and sunset (within seconds).
            let (rise, set) = (time(SolarEvent::Sunrise)?, time(SolarEvent::Sunset)?);
            Some(rise + (set - rise) / 2)
        }
        pb::SolarEvent::DawnCivil => time(SolarEvent::Dawn(DawnType::Civil)),
        pb::SolarEvent::DuskCivil => time(SolarEvent::Dusk(DawnType::Civil)),
        pb::SolarEvent::DawnNautical => time(SolarEvent::Dawn(DawnType::Nautical)),
        pb::SolarEvent::DuskNautical => time(SolarEvent::Dusk(DawnType::Nautical)),
        pb::SolarEvent::DawnAstronomical => time(SolarEvent::Dawn(DawnType::Astronomical)),
        pb::SolarEvent::DuskAstronomical => time(SolarEvent::Dusk(DawnType::Astronomical)),
    }
    .filter(|at| at.year() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    fn cron(expression: &str, zone: &str) -> Rule {
        let rule = pb::schedule::Rule::Cron(pb::CronRule {
            expression: expression.into(),
            time_zone: zone.into(),
        });
        Rule::from_pb(Some(&rule), "schedule").unwrap()
    }

    /// (expression, zone, after, expected next firing) — all instants in UTC.
    /// Europe/Berlin: CET +01:00, CEST +02:00 from 2026-03-29 01:00Z to
    /// 2026-10-25 01:00Z. America/New_York: EST -05:00, EDT -04:00 from
    /// 2026-03-08 07:00Z to 2026-11-01 06:00Z.
    const CRON_TABLE: &[(&str, &str, &str, &str)] = &[
        (
            "0 9 * * *",
            "Europe/Berlin",
            "2026-01-10T12:00:00Z",
            "2026-01-11T08:00:00Z",
        ),
        (
            "0 9 * * *",
            "Europe/Berlin",
            "2026-07-10T12:00:00Z",
            "2026-07-11T07:00:00Z",
        ),
        (
            "*/15 * * * *",
            "UTC",
            "2026-05-01T10:07:00Z",
            "2026-05-01T10:15:00Z",
        ),
        (
            "0 0 1 * *",
            "America/New_York",
            "2026-01-15T00:00:00Z",
            "2026-02-01T05:00:00Z",
        ),
        (
            "30 8 * * MON-FRI",
            "America/New_York",
            "2026-06-05T13:00:00Z",
            "2026-06-08T12:30:00Z",
        ),
        (
            "0 12 * * *",
            "",
            "2026-02-01T12:00:00Z",
            "2026-02-02T12:00:00Z",
        ),
        (
            "15 30 9 * * *",
            "UTC",
            "2026-02-01T09:30:14Z",
            "2026-02-01T09:30:15Z",
        ),
        // Berlin spring forward: 02:30 local does not exist on 2026-03-29; a
        // fixed-time job runs at the first instant after the gap (03:00 CEST).
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-28T12:00:00Z",
            "2026-03-29T01:00:00Z",
        ),
        // ... and the day after, at 02:30 CEST again.
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-29T12:00:00Z",
            "2026-03-30T00:30:00Z",
        ),
        // Berlin fall back: 02:30 local happens twice on 2026-10-25; it fires
        // once, at the first (CEST) occurrence.
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-10-24T12:00:00Z",
            "2026-10-25T00:30:00Z",
        ),
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z",
        ),
        // New York spring forward: 02:30 local is skipped on 2026-03-08.
        (
            "30 2 * * *",
            "America/New_York",
            "2026-03-07T12:00:00Z",
            "2026-03-08T07:00:00Z",
        ),
        // New York fall back: 01:30 local repeats on 2026-11-01; once, EDT.
        (
            "30 1 * * *",
            "America/New_York",
            "2026-10-31T12:00:00Z",
            "2026-11-01T05:30:00Z",
        ),
        (
            "30 1 * * *",
            "America/New_York",
            "2026-11-01T05:30:00Z",
            "2026-11-02T06:30:00Z",
        ),
        // An hourly job over New York's fall-back hour runs in both passes.
        (
            "0 * * * *",
            "America/New_York",
            "2026-11-01T05:00:00Z",
            "2026-11-01T06:00:00Z",
        ),
    ];

    #[test]
    fn cron_next_firings_in_zones_and_across_dst() {
        for (expression, zone, after, expected) in CRON_TABLE {
            let next = cron(expression, zone).next_after(ms(after), 0).unwrap();
            assert_eq!(
                next,
                ms(expected),
                "{expression} in {zone:?} after {after}: got {}",
                to_utc(next)
            );
        }
    }

    #[test]
    fn intervals_count_from_their_anchor() {
        let rule = Rule::Interval { every_ms: 1000 };
        assert_eq!(rule.next_after(500, 2000), Some(2000));
        assert_eq!(rule.next_after(2000, 2000), Some(3000));
        assert_eq!(rule.next_after(2999, 2000), Some(3000));
        assert_eq!(rule.next_after(3000, 2000), Some(4000));
    }

    /// Published almanac times, local clock, rounded to the minute:
    /// - New York (40.7128 N, 74.0060 W) and St. Augustine, FL (29.8947 N,
    ///   81.3145 W), 2020-12-21, EST: New York sunrise 7:16, solar noon 11:54,
    ///   sunset 16:29; St. Augustine sunrise 7:16, sunset 17:30 (the U.S.
    ///   Naval Observatory figures, as tabulated by Sunrise Sunset Calendars).
    ///   New York's 16:29 sunset is left out: it contradicts the same table's
    ///   sunrise and noon (noon is their midpoint, so sunset is about 16:32,
    ///   which is what we compute).
    /// - London (51.5072 N, 0.1276 W), 1st of the month (whattime.city's
    ///   London table): 1 January 08:07 / 16:01 GMT, 1 June 04:51 / 21:07
    ///   BST, 1 December 07:43 / 15:57 GMT. Checked against 2025.
    #[test]
    fn solar_events_match_published_almanac_times() {
        let cases: &[(f64, f64, &str, pb::SolarEvent, &str)] = &[
            (
                40.7128,
                -74.0060,
                "2020-12-21",
                pb::SolarEvent::Sunrise,
                "2020-12-21T07:16:00-05:00",
            ),
            (
                40.7128,
                -74.0060,
                "2020-12-21",
                pb::SolarEvent::SolarNoon,
                "2020-12-21T11:54:00-05:00",
            ),
            (
                29.8947,
                -81.3145,
                "2020-12-21",
                pb::SolarEvent::Sunrise,
                "2020-12-21T07:16:00-05:00",
            ),
            (
                29.8947,
                -81.3145,
                "2020-12-21",
                pb::SolarEvent::Sunset,
                "2020-12-21T17:30:00-05:00",
            ),
            (
                51.5072,
                -0.1276,
                "2025-01-01",
                pb::SolarEvent::Sunrise,
                "2025-01-01T08:07:00Z",
            ),
            (
                51.5072,
                -0.1276,
                "2025-01-01",
                pb::SolarEvent::Sunset,
                "2025-01-01T16:01:00Z",
            ),
            (
                51.5072,
                -0.1276,
                "2025-06-01",
                pb::SolarEvent::Sunrise,
                "2025-06-01T04:51:00+01:00",
            ),
            (
                51.5072,
                -0.1276,
                "2025-06-01",
                pb::SolarEvent::Sunset,
                "2025-06-01T21:07:00+01:00",
            ),
            (
                51.5072,
                -0.1276,
                "2025-12-01",
                pb::SolarEvent::Sunrise,
                "2025-12-01T07:43:00Z",
            ),
            (
                51.5072,
                -0.1276,
                "2025-12-01",
                pb::SolarEvent::Sunset,
                "2025-12-01T15:57:00Z",
            ),
        ];
        for (latitude, longitude, date, event, published) in cases {
            let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
            let coordinates = Coordinates::new(*latitude, *longitude).unwrap();
            let computed = solar_event(*event, coordinates, date)
                .unwrap()
                .timestamp_millis();
            let difference = (computed - ms(published)).abs();
            assert!(
                difference <= 2 * 60_000,
                "{event:?} at {latitude},{longitude} on {date}: computed {}, published {published}",
                to_utc(computed)
            );
        }
    }

    #[test]
    fn solar_rule_finds_the_next_event() {
        let rule = Rule::from_pb(
            Some(&pb::schedule::Rule::Solar(pb::SolarRule {
                event: pb::SolarEvent::Sunset as i32,
                latitude: 51.5072,
                longitude: -0.1276,
            })),
            "schedule",
        )
        .unwrap();
        // 2025-06-01 noon UTC: the next London sunset is that evening (20:07Z).
        let next = rule.next_after(ms("2025-06-01T12:00:00Z"), 0).unwrap();
        assert!(
            (next - ms("2025-06-01T20:07:00Z")).abs() <= 120_000,
            "{}",
            to_utc(next)
        );
        let after_sunset = rule.next_after(next, 0).unwrap();
        assert!(after_sunset - next > 23 * 3_600_000, "the next day's");
    }

    #[test]
    fn bad_rules_name_their_field() {
        let field =
            |rule: pb::schedule::Rule| match Rule::from_pb(Some(&rule), "schedule").unwrap_err() {
                ConveyorError::InvalidArgument(violation) => violation.field,
                other => panic!("{other:?}"),
            };
        let bad_cron = pb::schedule::Rule::Cron(pb::CronRule {
            expression: "61 * * * *".into(),
            time_zone: "UTC".into(),
        });
        assert_eq!(field(bad_cron), "schedule.cron.expression");
        let bad_zone = pb::schedule::Rule::Cron(pb::CronRule {
            expression: "0 * * * *".into(),
            time_zone: "Mars/Olympus".into(),
        });
        assert_eq!(field(bad_zone), "schedule.cron.time_zone");
        let bad_latitude = pb::schedule::Rule::Solar(pb::SolarRule {
            event: pb::SolarEvent::Sunrise as i32,
            latitude: 91.0,
            longitude: 0.0,
        });
        assert_eq!(field(bad_latitude), "schedule.solar.latitude");
        let fast = pb::schedule::Rule::Interval(pb::IntervalRule {
            every: Some(prost_types::Duration {
                seconds: 0,
                nanos: 10_000_000,
            }),
        });
        assert_eq!(field(fast), "schedule.interval.every");
        assert!(Rule::from_pb(None, "schedule").is_err());
    }

    /// Fields that list no value were accepted and then cost seconds of CPU
    /// per next-run computation (`* , * * * *`: 6.5 s in a release build;
    /// found by the `schedule` fuzz target). They are refused at once now.
    #[test]
    fn empty_cron_fields_are_refused_not_searched() {
        for expression in ["* , * * * *", "5 , * * * 1", "0 ,,, * * *", "0 0 * , *"] {
            let rule = pb::schedule::Rule::Cron(pb::CronRule {
                expression: expression.into(),
                time_zone: "UTC".into(),
            });
            let error = Rule::from_pb(Some(&rule), "schedule").unwrap_err();
            assert!(
                error.to_string().contains("lists no value"),
                "{expression}: {error}"
            );
        }
        // A doubled comma between values is only untidy.
        let untidy = pb::schedule::Rule::Cron(pb::CronRule {
            expression: "1,,2 * * * *".into(),
            time_zone: "UTC".into(),
        });
        assert!(Rule::from_pb(Some(&untidy), "schedule").is_ok());
    }
}
