//! An exhaustive check of a coupon's settings (paused or not) reaching Redis, before the code.
//!
//! An operator pauses and resumes admission (issue 27). PostgreSQL holds the setting, with a
//! version that every change moves; Redis's meta holds the one admission reads, with the
//! version it came from. A change is committed in PostgreSQL first, then written into the
//! meta (`settings.lua`), then recorded as landed; the API answers 200 only then. A meta
//! that is gone (Redis lost it) takes nothing: the change answers 202, and stays unlanded.
//! Every API's lander lands what PostgreSQL says has not landed. An API may die anywhere.
//!
//! A rebuild (Redis lost the meta, or it is not verified under the instance's stamp) reads
//! the coupon from PostgreSQL, then loads the meta (`load_meta.lua`): a change may commit
//! and land between the two. So a meta's settings are written only by a higher version:
//! the load never puts back a setting older than the one the meta holds, and a change never
//! writes over a newer one. That is not enough: Redis may lose the meta again between the
//! rebuild's read and its load (the model found it), and the load then creates the meta
//! from what it read, older than what was recorded as landed. A rebuilt meta admits only
//! once the rebuild records its stamp in PostgreSQL (closed until then), so that record
//! also sets PostgreSQL's record of what landed back to 0, in the same transaction: the
//! landers land the setting again (a no-op where the meta has it). (After a loss of
//! Redis's state mid-rebuild, a change answered 200 may so be out of force for up to the
//! landers' second: the window is stated, not closed. Lowering before the load is not
//! enough: the model found a change recorded between the two.) And a change records itself
//! as landed only under the stamp in force when it committed (read in the commit's
//! transaction): a change that landed in a meta lost afterwards, and rebuilt from a read
//! older than the change, would otherwise record itself after the rebuild lowered the
//! record (the model found that too); under another stamp it answers 202, for the landers.
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
    /// The load writes the settings it read whatever the meta holds.
    LoadOverwrites,
    /// A change recorded as landed though the meta was gone.
    RecordedWithoutMeta,
    /// The rebuild opens the meta without lowering the record of what landed.
    NoLowering,
    /// A change recorded as landed whatever the stamp in force.
    RecordUnderAnyStamp,
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
    /// Closed the meta and read PostgreSQL; the load is next.
    Read(Setting),
    /// Loaded it; recording its stamp (which opens it) is next.
    Loaded,
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
    RebuildLoads,
    RebuildOpens,
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
    /// `settings.lua`: 1 when the meta holds `setting` or newer, 0 when there is no meta.
    fn land(&self, s: &mut State, setting: Setting) -> bool {
        match &mut s.meta {
            None => false,
            Some(meta) => {
                if meta.version < setting.version {
                    *meta = setting;
                }
                true
            }
        }
    }

    /// PostgreSQL records `setting` as landed, if the stamp in force is still `stamp`.
    fn record(&self, s: &mut State, setting: Setting, stamp: u8) -> bool {
        let recorded = s.stamp == stamp || self.bug == Bug::RecordUnderAnyStamp;
        if recorded {
            s.landed = s.landed.max(setting.version);
        }
        recorded
    }

    /// `load_meta.lua` with what the rebuild read.
    fn load(&self, s: &mut State, read: Setting) {
        s.meta = Some(match (s.meta, self.bug) {
            (None, _) | (Some(_), Bug::LoadOverwrites) => read,
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
            Rebuild::Read(_) => actions.push(Action::RebuildLoads),
            Rebuild::Loaded => actions.push(Action::RebuildOpens),
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
                        let landed = self.land(&mut s, setting);
                        if landed {
                            s.lost_since_landing = false;
                        }
                        match landed || self.bug == Bug::RecordedWithoutMeta {
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
                    Lander::Land(setting, stamp) => match self.land(&mut s, setting) {
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
            Action::RebuildLoads => {
                let Rebuild::Read(read) = s.rebuild else {
                    unreachable!()
                };
                self.load(&mut s, read);
                s.rebuild = Rebuild::Loaded;
            }
            Action::RebuildOpens => {
                // Its stamp recorded, and in the same transaction what landed set back to 0; a
                // meta lost since the load stays closed, for the next rebuild.
                if self.bug != Bug::NoLowering {
                    s.landed = 0;
                }
                s.open = s.meta.is_some();
                s.stamp += 1;
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
fn a_load_that_overwrites_a_newer_setting_is_found() {
    // A rebuild reads PostgreSQL, the pause commits and lands, the load puts back "open".
    finds(
        &Model {
            bug: Bug::LoadOverwrites,
            loaded: true,
        },
        "is in force",
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
fn a_change_recorded_under_another_stamp_is_found() {
    // The rebuild reads, the pause commits and lands, Redis loses the meta, the rebuild
    // loads what it read and opens, and the pause records itself as landed.
    finds(
        &Model {
            bug: Bug::RecordUnderAnyStamp,
            loaded: true,
        },
        "recorded as landed is in force",
    );
}

#[test]
fn a_rebuild_that_keeps_the_record_of_what_landed_is_found() {
    // The rebuild reads, the pause commits, lands and is recorded, Redis loses the meta,
    // and the load creates it from what the rebuild read: opened so, recorded as paused.
    finds(
        &Model {
            bug: Bug::NoLowering,
            loaded: true,
        },
        "recorded as landed is in force",
    );
}
