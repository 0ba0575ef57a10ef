//! An exhaustive check of a coupon's settings (paused or not) reaching Redis, before the code.
//!
//! An operator pauses and resumes admission (issue 27). PostgreSQL holds the setting, with a
//! version that every change moves; Redis's meta holds the one admission reads, with the
//! version it came from. A change is committed in PostgreSQL first, then written into the
//! meta (`settings.lua`), then recorded as landed; the API answers 200 only then. A meta
//! that is gone (Redis lost it) takes nothing: the change answers 202, and stays unlanded.
//! Every API's lander lands what PostgreSQL says has not landed. An API may die anywhere.
//!
//! A rebuild (Redis lost the meta, or it is not verified under the instance's stamp) closes
//! the meta, reads the coupon from PostgreSQL, records its new stamp there, then loads the
//! meta (`load_meta.lua`), which writes the stamp into it and so opens it. A change is
//! written into any meta, but taken as landed, and so recorded, only where the meta is open
//! under the stamp the change was read with (`settings.lua`): a meta closed for its rebuild
//! may be replaced by the load from an older read, and Redis may lose it between the two
//! (the model found that trace, `LandedInAnyMeta`).
//!
//! The code keeps three more guards that this model, with one copy of the meta, shows no
//! need of: the load writes settings only over an older version, a new stamp sets the
//! record of what landed back to 0 (so the landers land again), and the record is taken
//! only under the stamp read at the commit. They are for a second copy of the state,
//! which this model lacks: a replica promoted, or an old primary failed back to, whose
//! meta may open without a change that landed in the other (the failover model's traces).
//!
//! A bucketed coupon (issue 24) has a meta per bucket, each with its own stamp, rebuild
//! (`bucket_restore.lua`) and record of what landed (`coupon_buckets.landed_settings`). A
//! change reads every bucket's stamp in force when it commits, lands in every bucket's meta
//! in turn, and is answered 200 only when every one took it and every record is taken under
//! its stamp; the landers look for a bucket whose record is behind. The model found a
//! change landed in the coupon's own keys alone, bucket 0's (`FirstBucketOnly`), and a
//! restore that writes no settings (`RestoreWithoutSettings`: a lost bucket comes back
//! unpaused, although its rebuild read the pause).
//!
//! Invariants, in every meta (a coupon's own, or each bucket's): a change answered 200, while
//! it is the last one, is in force in the open meta (a pause answered 200 is in force on
//! every API), unless Redis lost the meta since the change landed in it and its rebuild read
//! PostgreSQL before the change; whenever the last change is recorded as landed, the open
//! meta holds it; an open meta holds at least the version its rebuild read; at rest (nothing
//! left to do), the meta is open and holds PostgreSQL's setting and version.

use testkit::explorer::{Protocol, finds, holds};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// A change recorded as landed though the meta was gone.
    RecordedWithoutMeta,
    /// A change taken as landed in any meta, open under its stamp or not.
    LandedInAnyMeta,
    /// A bucketed coupon's change landed and recorded in its own keys only (bucket 0's,
    /// whose tag is the coupon id), as a single coupon's is.
    FirstBucketOnly,
    /// A bucket's restore writes no settings (it wrote the end alone, before buckets could
    /// be paused): a lost bucket comes back unpaused.
    RestoreWithoutSettings,
}

/// A setting and the version it was committed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Setting {
    paused: bool,
    version: u8,
}

/// The most buckets a model has (2: each bucket's protocol is the same, and two are
/// enough for one to be rebuilt or lost while the other lands).
const MAX_BUCKETS: usize = 2;

/// Landing a change: the stamp of every bucket in force when it committed, the bucket
/// whose meta is next, and whether every one so far took it as landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Landing {
    setting: Setting,
    stamps: [u8; MAX_BUCKETS],
    at: u8,
    all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Changer {
    /// About to commit change number `.0` (0: pause, 1: resume).
    Commit(u8),
    Land(Landing),
    /// Every bucket took it: each recorded under its stamp, in one transaction.
    Record(Landing),
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Lander {
    Idle,
    Land(Landing),
    Record(Landing),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Rebuild {
    Idle,
    /// Closed the meta and read PostgreSQL; recording its stamp is next.
    Read(Setting),
    /// Recorded its stamp (the record of what landed set back to 0); the load, which
    /// writes the stamp into the meta and so opens it, is next.
    Recorded(Setting),
}

/// One meta (a single coupon's, or one bucket's) and what PostgreSQL keeps of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Meta {
    setting: Option<Setting>,
    /// Whether the meta admits (verified under the stamp in force).
    open: bool,
    /// The stamp in force: a new one at every rebuild's opening.
    stamp: u8,
    /// PostgreSQL's record of the version landed under that stamp.
    landed: u8,
    /// Whether Redis lost the meta since the last change answered 200 landed in it.
    lost_since_landing: bool,
    /// The version the load that opened the meta last read from PostgreSQL.
    loaded_from: u8,
    rebuild: Rebuild,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    pg: Setting,
    metas: [Meta; MAX_BUCKETS],
    /// The last change answered 200 (recorded as landed by its own API).
    answered: Option<Setting>,
    changer: Changer,
    changer_died: bool,
    lander: Lander,
    losses: u8,
    rebuilds: u8,
}

#[derive(Debug)]
enum Action {
    Change,
    ChangerDies,
    Lander,
    Lose(usize),
    RebuildReads(usize),
    RebuildRecords(usize),
    RebuildLoads(usize),
}

const CHANGES: u8 = 2;
const LOSSES: u8 = 1;
const REBUILDS: u8 = 2;

struct Model {
    bug: Bug,
    /// Whether the coupon's metas are loaded at first (else its first request loads them).
    loaded: bool,
    /// 1 for a coupon of one bucket, 2 for a bucketed one.
    buckets: usize,
}

impl Model {
    /// The metas a change lands in and records (all of them, unless the bug).
    fn landed_in(&self) -> usize {
        match self.bug {
            Bug::FirstBucketOnly => 1,
            _ => self.buckets,
        }
    }

    /// A change just committed (or read by the landers), with the stamps in force.
    fn landing(&self, s: &State) -> Landing {
        Landing {
            setting: s.pg,
            stamps: s.metas.map(|meta| meta.stamp),
            at: 0,
            all: true,
        }
    }

    /// `settings.lua` on the next meta: writes a newer version into any meta; taken as
    /// landed only when the meta is open under the stamp in force when the setting was read
    /// (then it may be recorded). The landing after it: the next meta, or None when every
    /// meta was written.
    fn land(&self, s: &mut State, landing: Landing) -> (bool, Option<Landing>) {
        let at = usize::from(landing.at);
        let meta = &mut s.metas[at];
        let landed = match &mut meta.setting {
            None => self.bug == Bug::RecordedWithoutMeta,
            Some(setting) => {
                if setting.version < landing.setting.version {
                    *setting = landing.setting;
                }
                (meta.open && meta.stamp == landing.stamps[at]) || self.bug == Bug::LandedInAnyMeta
            }
        };
        let landing = Landing {
            at: landing.at + 1,
            all: landing.all && landed,
            ..landing
        };
        (
            landed,
            (usize::from(landing.at) < self.landed_in()).then_some(landing),
        )
    }

    /// PostgreSQL records the setting as landed in every meta whose stamp in force is still
    /// the one read with it; whether it recorded them all.
    fn record(&self, s: &mut State, landing: Landing) -> bool {
        let mut all = true;
        for (at, meta) in s.metas.iter_mut().enumerate().take(self.landed_in()) {
            if meta.stamp == landing.stamps[at] {
                meta.landed = meta.landed.max(landing.setting.version);
            } else {
                all = false;
            }
        }
        all
    }

    /// `load_meta.lua` (a coupon's own meta) or `bucket_restore.lua` (a bucket's) with what
    /// the rebuild read.
    fn load(&self, meta: &mut Meta, read: Setting) {
        meta.setting = Some(match meta.setting {
            _ if self.bug == Bug::RestoreWithoutSettings => meta.setting.unwrap_or(Setting {
                paused: false,
                version: 0,
            }),
            Some(setting) if setting.version >= read.version => setting,
            _ => read,
        });
        meta.loaded_from = read.version;
    }
}

impl Protocol for Model {
    type State = State;
    type Action = Action;

    fn initial(&self) -> State {
        let setting = Setting {
            paused: false,
            version: 0,
        };
        let meta = Meta {
            setting: self.loaded.then_some(setting),
            open: self.loaded,
            stamp: 0,
            landed: 0,
            lost_since_landing: false,
            loaded_from: 0,
            rebuild: Rebuild::Idle,
        };
        State {
            pg: setting,
            metas: [meta; MAX_BUCKETS],
            answered: None,
            changer: Changer::Commit(0),
            changer_died: false,
            lander: Lander::Idle,
            losses: 0,
            rebuilds: 0,
        }
    }

    fn actions(&self, s: &State) -> Vec<Action> {
        let mut actions = Vec::new();
        if s.changer != Changer::Done {
            actions.push(Action::Change);
            if !s.changer_died && !matches!(s.changer, Changer::Commit(_)) {
                actions.push(Action::ChangerDies);
            }
        }
        let metas = &s.metas[..self.buckets];
        // The lander runs its pass only when there is something unlanded (in any bucket);
        // a pass started goes on (it may also be the one whose API dies: the next pass
        // redoes it).
        let unlanded = metas[..self.landed_in()]
            .iter()
            .any(|meta| meta.landed < s.pg.version);
        if s.lander != Lander::Idle || unlanded {
            actions.push(Action::Lander);
        }
        for (at, meta) in metas.iter().enumerate() {
            if s.losses < LOSSES && meta.setting.is_some() {
                actions.push(Action::Lose(at));
            }
            match meta.rebuild {
                // A lost meta is rebuilt (a request finds it gone); one not verified is too.
                Rebuild::Idle if meta.setting.is_none() || s.rebuilds < REBUILDS => {
                    actions.push(Action::RebuildReads(at))
                }
                Rebuild::Read(_) => actions.push(Action::RebuildRecords(at)),
                Rebuild::Recorded(_) => actions.push(Action::RebuildLoads(at)),
                Rebuild::Idle => {}
            }
        }
        actions
    }

    fn next(&self, s: &State, action: &Action) -> State {
        let mut s = s.clone();
        match action {
            Action::Change => {
                s.changer = match s.changer {
                    Changer::Commit(n) => {
                        s.pg = Setting {
                            paused: n == 0,
                            version: s.pg.version + 1,
                        };
                        Changer::Land(self.landing(&s))
                    }
                    Changer::Land(landing) => {
                        let at = usize::from(landing.at);
                        let (landed, next) = self.land(&mut s, landing);
                        if landed {
                            s.metas[at].lost_since_landing = false;
                        }
                        match next {
                            Some(next) => Changer::Land(next),
                            None if landing.all && landed => Changer::Record(landing),
                            // 202: the lander lands it.
                            None => next_change(landing.setting),
                        }
                    }
                    Changer::Record(landing) => {
                        // 200 if recorded in every meta, else 202 (the landers land it).
                        if self.record(&mut s, landing) {
                            s.answered = Some(landing.setting);
                        }
                        next_change(landing.setting)
                    }
                    Changer::Done => unreachable!(),
                };
            }
            Action::ChangerDies => {
                s.changer_died = true;
                s.changer = match s.changer {
                    Changer::Land(landing) | Changer::Record(landing) => {
                        next_change(landing.setting)
                    }
                    other => other,
                };
            }
            Action::Lander => {
                s.lander = match s.lander {
                    Lander::Idle => Lander::Land(self.landing(&s)),
                    Lander::Land(landing) => match self.land(&mut s, landing) {
                        (_, Some(next)) => Lander::Land(next),
                        (true, None) if landing.all => Lander::Record(landing),
                        _ => Lander::Idle,
                    },
                    Lander::Record(landing) => {
                        self.record(&mut s, landing);
                        Lander::Idle
                    }
                };
            }
            Action::Lose(at) => {
                s.losses += 1;
                let meta = &mut s.metas[*at];
                meta.setting = None;
                meta.open = false;
                meta.lost_since_landing = true;
            }
            Action::RebuildReads(at) => {
                s.rebuilds += 1;
                let pg = s.pg;
                let meta = &mut s.metas[*at];
                meta.open = false;
                meta.rebuild = Rebuild::Read(pg);
            }
            Action::RebuildRecords(at) => {
                let meta = &mut s.metas[*at];
                let Rebuild::Read(read) = meta.rebuild else {
                    unreachable!()
                };
                // Its stamp recorded in PostgreSQL, and in the same transaction the record
                // of what landed (in this meta) set back to 0.
                meta.stamp += 1;
                meta.landed = 0;
                meta.rebuild = Rebuild::Recorded(read);
            }
            Action::RebuildLoads(at) => {
                let meta = &mut s.metas[*at];
                let Rebuild::Recorded(read) = meta.rebuild else {
                    unreachable!()
                };
                self.load(meta, read);
                meta.open = true;
                meta.rebuild = Rebuild::Idle;
            }
        }
        s
    }

    fn violation(&self, s: &State) -> Option<&'static str> {
        let differs = |meta: &Meta| {
            meta.open
                && meta
                    .setting
                    .is_some_and(|setting| setting.paused != s.pg.paused)
        };
        for meta in &s.metas[..self.buckets] {
            // An answer 200 is true in every meta while the change is the last one, unless
            // Redis lost the meta since the change landed and its rebuild read PostgreSQL
            // before the change (the landers put it back within their second).
            let stale_rebuild = meta.lost_since_landing && meta.loaded_from < s.pg.version;
            if s.answered == Some(s.pg) && !stale_rebuild && differs(meta) {
                return Some("a change answered 200 is in force");
            }
            if meta.landed == s.pg.version && differs(meta) {
                return Some("a change recorded as landed is in force");
            }
            if meta.open
                && meta
                    .setting
                    .is_some_and(|setting| setting.version < meta.loaded_from)
            {
                return Some("a rebuilt meta holds at least what its rebuild read");
            }
            if self.actions(s).is_empty() && (meta.setting != Some(s.pg) || !meta.open) {
                return Some("at rest, Redis holds PostgreSQL's setting");
            }
        }
        None
    }
}

/// After change `setting.version` (1: the pause), the next one, or none.
fn next_change(setting: Setting) -> Changer {
    match setting.version < CHANGES {
        true => Changer::Commit(setting.version),
        false => Changer::Done,
    }
}

fn model(bug: Bug, loaded: bool, buckets: usize) -> Model {
    Model {
        bug,
        loaded,
        buckets,
    }
}

#[test]
fn every_reachable_state_keeps_every_invariant() {
    holds(
        &model(Bug::None, true, 1),
        "pause and resume, loaded",
        1_000,
    );
    holds(
        &model(Bug::None, false, 1),
        "pause and resume, not loaded yet",
        1_000,
    );
    holds(
        &model(Bug::None, true, 2),
        "pause and resume, two buckets",
        10_000,
    );
    holds(
        &model(Bug::None, false, 2),
        "pause and resume, two buckets not loaded yet",
        10_000,
    );
}

#[test]
fn a_change_recorded_without_a_meta_is_found() {
    // The meta is not loaded yet; the pause finds none, and answers 200 all the same; the
    // first request's load, which read before it, opens the meta unpaused.
    finds(
        &model(Bug::RecordedWithoutMeta, false, 1),
        "answered 200 is in force",
    );
}

#[test]
fn a_change_taken_as_landed_in_a_closed_meta_is_found() {
    finds(&model(Bug::LandedInAnyMeta, true, 1), "is in force");
}

#[test]
fn a_bucketed_change_landed_in_the_first_bucket_only_is_found() {
    finds(
        &model(Bug::FirstBucketOnly, true, 2),
        "answered 200 is in force",
    );
}

#[test]
fn a_bucket_restored_without_its_settings_is_found() {
    finds(
        &model(Bug::RestoreWithoutSettings, true, 2),
        "holds at least what its rebuild read",
    );
}
