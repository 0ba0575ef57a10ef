//! A coupon paused or resumed, or its end moved later, during its sale (the operators'
//! actions): PostgreSQL first, under a version every change moves, then Redis's meta, as
//! `coupon-core/tests/settings_model.rs` checks: a coupon's own meta, or every bucket's of a
//! bucketed coupon, each under its own stamp. An end moved later after it came holds a
//! coupon's admission for the finished gates' hold (`scripts/write_settings.lua`,
//! `coupon-core/tests/finished_gate_model.rs`); a bucketed coupon's is not held, since no
//! finished gate shuts on a bucket's answers.
//!
//! The API that changes a setting lands it at once, and records it as landed under the
//! stamps in force when it committed: then the answer is 200, and the setting is in force on
//! every API (admission reads it in the meta). One it could not land or record everywhere
//! (a state not loaded, or rebuilt meanwhile; Redis failed; the API died) answers 202, and
//! every API's lander lands it within a second of Redis being able to hold it.

use std::time::Duration;

use coupon_core::db::settings::{
    Change, Changed, SettingsRefused, Stamps, change_settings, record_settings_landed,
    unlanded_settings,
};
use coupon_core::domain::{Coupon, CouponId};

use super::{Issuer, LONGEST_HOLD};
use crate::error::ApiError;
use crate::layouts::Layout;

/// Where a change of settings stands once the API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsChange {
    /// In force: Redis holds it, recorded under the stamp in force.
    Landed(Coupon),
    /// PostgreSQL holds it, and Redis will within a second of the coupon's state being open.
    Landing(Coupon),
}

impl Issuer {
    /// Pauses or resumes `coupon`, or moves its end later (the same again lands a change
    /// that did not land).
    pub async fn change_settings(
        &self,
        coupon: CouponId,
        change: Change,
    ) -> Result<SettingsChange, ApiError> {
        let changed = {
            let mut db = self.pool.get().await?;
            change_settings(&mut db, coupon, change).await?
        };
        let changed = changed.map_err(|refused| match refused {
            SettingsRefused::NotFound(id) => ApiError::CouponNotFound(id),
            passed @ SettingsRefused::EndPassed => ApiError::InvalidRequest(passed.to_string()),
            state @ (SettingsRefused::EndNotLater(_) | SettingsRefused::NoEnd) => {
                ApiError::Conflict(state.to_string())
            }
        })?;
        // The coupon's read is kept a second: the next one shows the new setting.
        self.coupon_reads.forget(coupon);
        // Committed: a failure to land it now leaves it to the landers, as a landing that
        // found no open state does (202, not 503: a retry would change nothing).
        Ok(match self.land_settings(&changed).await {
            Ok(true) => SettingsChange::Landed(changed.coupon),
            Ok(false) => SettingsChange::Landing(changed.coupon),
            Err(err) => {
                tracing::warn!(coupon = %changed.coupon.id, error = %err,
                    "coupon settings not landed now; the landers will");
                SettingsChange::Landing(changed.coupon)
            }
        })
    }

    /// Lands `changed` in Redis, in its coupon's own meta or in every bucket's, and records
    /// it under the stamps it was read with: false if a state is not loaded or not open under
    /// its stamp (closed for its rebuild, a copy on a node not verified), or a new stamp came
    /// since. Every meta is written even when one is not open: each takes the change as soon
    /// as it can.
    async fn land_settings(&self, changed: &Changed) -> Result<bool, ApiError> {
        let coupon = &changed.coupon;
        let mut redis = self.redis.clone();
        let mut everywhere = true;
        match &changed.stamps {
            Stamps::Own(stamp) => {
                let keys = self.scripts.keys(coupon.id);
                everywhere = self
                    .scripts
                    .land_settings(&mut redis, &keys, coupon, stamp.as_ref(), LONGEST_HOLD)
                    .await?;
            }
            Stamps::Buckets(stamps) => {
                let Some(Layout::Buckets(places)) = self.layouts.get(coupon.id).await? else {
                    return Err(ApiError::CouponNotFound(coupon.id.get()));
                };
                // One bucket's error (its shard failing over) stops no other bucket's
                // landing: a pause is wanted most during an incident.
                let mut failed = None;
                for (bucket, stamp) in stamps {
                    let Some(place) = places.places.iter().find(|at| at.bucket == *bucket) else {
                        everywhere = false;
                        continue;
                    };
                    match self
                        .scripts
                        .land_settings(
                            &mut redis,
                            &place.keys,
                            coupon,
                            stamp.as_ref(),
                            Duration::ZERO,
                        )
                        .await
                    {
                        Ok(landed) => everywhere &= landed,
                        Err(err) => {
                            everywhere = false;
                            failed = Some(err);
                        }
                    }
                }
                if let Some(err) = failed {
                    return Err(err.into());
                }
            }
        }
        if !everywhere {
            return Ok(false);
        }
        let mut db = self.pool.get().await?;
        let recorded = record_settings_landed(&mut db, changed).await?;
        if recorded {
            tracing::info!(coupon = %coupon.id, paused = coupon.settings.paused,
                ends_at = ?coupon.ends_at, version = coupon.settings.version,
                "coupon settings landed");
        }
        Ok(recorded)
    }

    /// One pass of the landers for settings: how many landed.
    pub async fn land_unlanded_settings(&self) -> Result<usize, ApiError> {
        let changes = unlanded_settings(&mut *self.pool.get().await?).await?;
        let mut landed = 0;
        for changed in changes {
            match self.land_settings(&changed).await {
                Ok(true) => landed += 1,
                Ok(false) => tracing::info!(coupon = %changed.coupon.id,
                    "coupon settings not landed yet: the coupon's state is not open"),
                Err(err) => tracing::warn!(coupon = %changed.coupon.id, error = %err,
                    "coupon settings not landed now"),
            }
        }
        Ok(landed)
    }
}
