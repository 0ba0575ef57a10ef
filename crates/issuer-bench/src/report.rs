//! Every scenario's report: a Markdown table for people, JSON (`--json`) for scripts, and
//! with `--report DIR` an HTML page with its plots.

use std::path::Path;

use serde::Serialize;

use crate::html::{self, Figure};

pub trait Report: Serialize {
    /// The scenario's name, which also names its HTML page.
    fn name(&self) -> &'static str;

    fn markdown(&self) -> String;

    /// Plots for the HTML report; none unless the scenario has something to draw.
    fn figures(&self) -> Vec<Figure> {
        Vec::new()
    }

    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else {
            println!("{}", self.markdown());
        }
        Ok(())
    }

    /// Prints the report and, given a directory, writes its HTML page there too.
    fn emit(&self, json: bool, html_dir: Option<&Path>) -> anyhow::Result<()> {
        self.print(json)?;
        if let Some(dir) = html_dir {
            let page = html::write(dir, self.name(), &self.markdown(), &self.figures())?;
            eprintln!("HTML report: {}", page.display());
        }
        Ok(())
    }
}
