//! Renders the minijinja templates under `prompts/` into chat messages. The only crate that names
//! minijinja: environments hand it their templates and a serializable context.

pub mod deepseek;
pub mod generic;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

/// A set of named templates compiled once and rendered many times.
pub struct Templates {
    env: Environment<'static>,
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
}

impl Templates {
    /// Compile `(name, source)` pairs. Undefined variables are errors, so a template that names a
    /// field the context lacks fails loudly instead of rendering an empty string.
    pub fn new(sources: &[(&'static str, &'static str)]) -> Result<Templates, PromptError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        Templates::compile(env, sources)
    }

    /// Compile templates whose every character is output, with no block-whitespace trimming:
    /// for model chat formats, where each newline is part of the format.
    pub fn verbatim(sources: &[(&'static str, &'static str)]) -> Result<Templates, PromptError> {
        Templates::compile(Environment::new(), sources)
    }

    fn compile(
        mut env: Environment<'static>,
        sources: &[(&'static str, &'static str)],
    ) -> Result<Templates, PromptError> {
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(false);
        for (name, src) in sources {
            env.add_template(name, src)
                .map_err(|e| PromptError::Template {
                    name: name.to_string(),
                    message: format!("{e:#}"),
                })?;
        }
        Ok(Templates { env })
    }

    pub fn render(&self, name: &str, ctx: &impl Serialize) -> Result<String, PromptError> {
        let err = |e: minijinja::Error| PromptError::Template {
            name: name.to_string(),
            message: format!("{e:#}"),
        };
        self.env
            .get_template(name)
            .map_err(err)?
            .render(ctx)
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_rejects_undefined() {
        #[derive(Serialize)]
        struct Ctx {
            who: &'static str,
        }
        let t = Templates::new(&[("a", "hello {{ who }}"), ("b", "{{ missing }}")]).unwrap();
        assert_eq!(t.render("a", &Ctx { who: "x" }).unwrap(), "hello x");
        assert!(
            t.render("b", &Ctx { who: "x" })
                .unwrap_err()
                .to_string()
                .contains("template b")
        );
        assert!(Templates::new(&[("c", "{% if %}")]).is_err());
    }
}
