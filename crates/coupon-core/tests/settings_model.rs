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
//! Invariants: a change answered 200, while it is the last one, is in force in the open
//! meta (a pause answered 200 is in force on every API), unless Redis lost the meta since
//! the change landed in it;
//! whenever the last change is recorded as landed, the open meta holds it; at rest (nothing
//! left to do), the meta is open and holds PostgreSQL's setting and version.

use testkit::explorer::{Protocol, finds, holds};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// A change recorded as landed though the meta was gone.
    RecordedWithoutMeta,
    /// A change taken as landed in any meta, open under its stamp or not.
    LandedInAnyMeta,
}

/// A setting and the version it was committed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Setting {
    paused: bool,
    version: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Changer {
    /// About to commit change number `.0` (0: pause, 1: resume).
    Commit(u8),
    /// The setting committed, and the stamp in force read with it.
    Land(Setting, u8),
    Record(Setting, u8),
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Lander {
    Idle,
    Land(Setting, u8),
    Record(Setting, u8),
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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    pg: Setting,
    landed: u8,
    meta: Option<Setting>,
    /// Whether the meta admits (verified under the stamp in force).
    open: bool,
    /// The stamp in force: a new one at every rebuild's opening.
    stamp: u8,
    /// The last change answered 200 (recorded as landed by its own API).
    answered: Option<Setting>,
    /// Whether Redis lost the meta since that change landed in it.
    lost_since_landing: bool,
    changer: Changer,
    changer_died: bool,
    lander: Lander,
    rebuild: Rebuild,
    losses: u8,
    rebuilds: u8,
}

#[derive(Debug)]
enum Action {
    Change,
    ChangerDies,
    Lander,
    Lose,
    RebuildReads,
    RebuildRecords,
    RebuildLoads,
}

const CHANGES: u8 = 2;
const LOSSES: u8 = 1;
const REBUILDS: u8 = 2;

struct Model {
    bug: Bug,
    /// Whether the coupon's meta is loaded at first (else its first request loads it).
    loaded: bool,
}

impl Model {
    /// `settings.lua`: writes a newer version into any meta; true only when the meta is open
    /// under `stamp`, the one in force when the setting was read (then it may be recorded).
    fn land(&self, s: &mut State, setting: Setting, stamp: u8) -> bool {
        let Some(meta) = &mut s.meta else {
            return false;
        };
        if meta.version < setting.version {
            *meta = setting;
        }
        (s.open && s.stamp == stamp) || self.bug == Bug::LandedInAnyMeta
    }

    /// PostgreSQL records `setting` as landed, if the stamp in force is still `stamp`.
    fn record(&self, s: &mut State, setting: Setting, stamp: u8) -> bool {
        let recorded = s.stamp == stamp;
        if recorded {
            s.landed = s.landed.max(setting.version);
        }
        recorded
    }

    /// `load_meta.lua` with what the rebuild read.
    fn load(&self, s: &mut State, read: Setting) {
        s.meta = Some(match (s.meta, self.bug) {
            (None, _) => read,
            (Some(meta), _) if meta.version >= read.version => meta,
            (Some(_), _) => read,
        });
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
        State {
            pg: setting,
            landed: 0,
            meta: self.loaded.then_some(setting),
            open: self.loaded,
            stamp: 0,
            answered: None,
            lost_since_landing: false,
            changer: Changer::Commit(0),
            changer_died: false,
            lander: Lander::Idle,
            rebuild: Rebuild::Idle,
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
        // The lander runs its pass only when there is something unlanded; a pass started
        // goes on (it may also be the one whose API dies: the next pass redoes it).
        if s.lander != Lander::Idle || s.landed < s.pg.version {
            actions.push(Action::Lander);
        }
        if s.losses < LOSSES && s.meta.is_some() {
            actions.push(Action::Lose);
        }
        match s.rebuild {
            // A lost meta is rebuilt (a request finds it gone); one not verified is too.
            Rebuild::Idle if s.meta.is_none() || s.rebuilds < REBUILDS => {
                actions.push(Action::RebuildReads)
            }
            Rebuild::Read(_) => actions.push(Action::RebuildRecords),
            Rebuild::Recorded(_) => actions.push(Action::RebuildLoads),
            Rebuild::Idle => {}
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
                        Changer::Land(s.pg, s.stamp)
                    }
                    Changer::Land(setting, stamp) => {
                        let landed = self.land(&mut s, setting, stamp);
                        if landed {
                            s.lost_since_landing = false;
                        }
                        match landed || (self.bug == Bug::RecordedWithoutMeta && s.meta.is_none()) {
                            true => Changer::Record(setting, stamp),
                            // 202: the lander lands it.
                            false => next_change(setting),
                        }
                    }
                    Changer::Record(setting, stamp) => {
                        // 200 if recorded, else 202 (the landers land it).
                        if self.record(&mut s, setting, stamp) {
                            s.answered = Some(setting);
                        }
                        next_change(setting)
                    }
                    Changer::Done => unreachable!(),
                };
            }
            Action::ChangerDies => {
                s.changer_died = true;
                s.changer = match s.changer {
                    Changer::Land(setting, _) | Changer::Record(setting, _) => next_change(setting),
                    other => other,
                };
            }
            Action::Lander => {
                s.lander = match s.lander {
                    Lander::Idle => Lander::Land(s.pg, s.stamp),
                    Lander::Land(setting, stamp) => match self.land(&mut s, setting, stamp) {
                        true => Lander::Record(setting, stamp),
                        false => Lander::Idle,
                    },
                    Lander::Record(setting, stamp) => {
                        self.record(&mut s, setting, stamp);
                        Lander::Idle
                    }
                };
            }
            Action::Lose => {
                s.losses += 1;
                s.meta = None;
                s.open = false;
                s.lost_since_landing = true;
            }
            Action::RebuildReads => {
                s.rebuilds += 1;
                s.open = false;
                s.rebuild = Rebuild::Read(s.pg);
            }
            Action::RebuildRecords => {
                let Rebuild::Read(read) = s.rebuild else {
                    unreachable!()
                };
                // Its stamp recorded in PostgreSQL, and in the same transaction the record
                // of what landed set back to 0.
                s.stamp += 1;
                s.landed = 0;
                s.rebuild = Rebuild::Recorded(read);
            }
            Action::RebuildLoads => {
                let Rebuild::Recorded(read) = s.rebuild else {
                    unreachable!()
                };
                self.load(&mut s, read);
                s.open = true;
                s.rebuild = Rebuild::Idle;
            }
        }
        s
    }

    fn violation(&self, s: &State) -> Option<&'static str> {
        // An answer 200 is true while the change is the last one, unless Redis lost the
        // meta since the change landed (the landers put it back within their second).
        if s.answered == Some(s.pg)
            && !s.lost_since_landing
            && s.open
            && s.meta.is_some_and(|meta| meta.paused != s.pg.paused)
        {
            return Some("a change answered 200 is in force");
        }
        if s.landed == s.pg.version
            && s.open
            && s.meta.is_some_and(|meta| meta.paused != s.pg.paused)
        {
            return Some("a change recorded as landed is in force");
        }
        if self.actions(s).is_empty() && (s.meta != Some(s.pg) || !s.open) {
            return Some("at rest, Redis holds PostgreSQL's setting");
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

#[test]
fn every_reachable_state_keeps_every_invariant() {
    holds(
        &Model {
            bug: Bug::None,
            loaded: true,
        },
        "pause and resume, loaded",
        1_000,
    );
    holds(
        &Model {
            bug: Bug::None,
            loaded: false,
        },
        "pause and resume, not loaded yet",
        1_000,
    );
}

#[test]
fn a_change_recorded_without_a_meta_is_found() {
    // The meta is not loaded yet; the pause finds none, and answers 200 all the same; the
    // first request's load, which read before it, opens the meta unpaused.
    finds(
        &Model {
            bug: Bug::RecordedWithoutMeta,
            loaded: false,
        },
        "answered 200 is in force",
    );
}

#[test]
fn a_change_taken_as_landed_in_a_closed_meta_is_found() {
    finds(
        &Model {
            bug: Bug::LandedInAnyMeta,
            loaded: true,
        },
        "is in force",
    );
}
