//! Every scenario's report: a Markdown table for people, JSON (`--json`) for scripts.

use serde::Serialize;

pub trait Report: Serialize {
    fn markdown(&self) -> String;

    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else {
            println!("{}", self.markdown());
        }
        Ok(())
    }
}
