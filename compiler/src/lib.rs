//! The flow compiler: `.flow` text -> AST -> typed IR -> logical plan.
//!
//! Each stage is its own module with its own types and a text form:
//!
//! | stage | module | input -> output | text form |
//! | --- | --- | --- | --- |
//! | parse | [`syntax`] | text -> [`syntax::ast::File`] + diagnostics | `--emit ast` |
//! | check | [`check`] | ASTs of a program -> [`ir::Program`] + diagnostics | `--emit ir` |
//! | plan | [`plan`] | program -> [`plan::Plan`] (dataflow graph) | `--emit plan` |
//!
//! [`compile`] runs the front end over a root file and its imports. It never fails:
//! problems are [`diag::Diagnostic`]s. The compiler knows nothing of terminals, JSON
//! or editors; the CLI and the LSP layer render what it returns.

pub mod check;
pub mod diag;
pub mod exec;
pub mod ide;
pub mod ir;
pub mod physical;
pub mod plan;
pub mod source;
pub mod syntax;

use diag::Diagnostic;
use source::{FileId, SourceMap, Span};
use std::path::{Component, Path, PathBuf};
use syntax::ast;

/// Reads source files; the CLI reads the disk, an editor serves open buffers.
pub trait FileLoader {
    fn load(&self, path: &Path) -> std::io::Result<String>;
}

/// Reads files from the file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskLoader;

impl FileLoader for DiskLoader {
    fn load(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Everything the front end learned about one program.
pub struct Compilation {
    pub sources: SourceMap,
    /// The parsed files, the root first.
    pub files: Vec<(FileId, ast::File)>,
    /// The typed program, when there are no errors.
    pub program: Option<ir::Program>,
    pub diagnostics: Vec<Diagnostic>,
    /// Every global name and its declaration.
    pub globals: std::collections::HashMap<String, check::Global>,
}

impl Compilation {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Compiles the program whose root file is `path`, loading imports with `loader`.
/// `text` is the root file's text if the caller already has it.
pub fn compile(path: &Path, text: Option<String>, loader: &dyn FileLoader) -> Compilation {
    compile_impl(path, text, loader, false, &mut syntax::parse).0
}

/// [`compile`], also recording what the checker saw ([`check::Trace`]) for editor
/// queries ([`ide`]).
pub fn compile_traced(path: &Path, text: Option<String>, loader: &dyn FileLoader) -> (Compilation, check::Trace) {
    let (c, t) = compile_impl(path, text, loader, true, &mut syntax::parse);
    (c, t.unwrap_or_default())
}

/// A parser of source files: [`syntax::parse`], or one that reuses earlier work
/// (an editor's [`ide::ParseCache`]).
pub type ParseFn<'a> = dyn FnMut(FileId, &str) -> (ast::File, Vec<Diagnostic>) + 'a;

/// [`compile_traced`] with the files parsed by `parse`.
pub fn compile_traced_with(
    path: &Path,
    text: Option<String>,
    loader: &dyn FileLoader,
    parse: &mut ParseFn<'_>,
) -> (Compilation, check::Trace) {
    let (c, t) = compile_impl(path, text, loader, true, parse);
    (c, t.unwrap_or_default())
}

fn compile_impl(
    path: &Path,
    text: Option<String>,
    loader: &dyn FileLoader,
    traced: bool,
    parse: &mut ParseFn<'_>,
) -> (Compilation, Option<check::Trace>) {
    let mut sources = SourceMap::new();
    let mut files = Vec::new();
    let mut diags = Vec::new();
    let root_text = match text {
        Some(t) => Some(t),
        None => match loader.load(path) {
            Ok(t) => Some(t),
            Err(e) => {
                // The file itself cannot be read: report against an empty source.
                let id = sources.add(path.display().to_string(), "");
                diags.push(
                    Diagnostic::error("E0107", Span::new(id, 0, 0), format!("cannot read `{}`: {e}", path.display()))
                        .label("file not readable")
                        .help("check the path"),
                );
                None
            }
        },
    };
    if let Some(t) = root_text {
        let norm = normalize(path);
        let mut stack = Vec::new();
        load_rec(&norm, t, loader, &mut sources, &mut files, &mut diags, &mut stack, parse);
    }
    let refs: Vec<&ast::File> = files.iter().map(|(_, f)| f).collect();
    let syntax_errors = diags.iter().any(Diagnostic::is_error);
    let (checked, trace) = if traced {
        let (c, t) = check::check_traced(&refs, syntax_errors);
        (c, Some(t))
    } else {
        (check::check(&refs, syntax_errors), None)
    };
    diags.extend(checked.diagnostics);
    check::sort_diagnostics(&mut diags);
    let has_errors = diags.iter().any(Diagnostic::is_error);
    let c = Compilation {
        sources,
        files,
        program: if has_errors { None } else { checked.program },
        diagnostics: diags,
        globals: checked.globals,
    };
    (c, trace)
}

/// Compiles source text held in memory (tests, benchmarks); imports read the disk
/// relative to `name`.
pub fn compile_str(name: &str, text: &str) -> Compilation {
    compile(Path::new(name), Some(text.to_string()), &DiskLoader)
}

#[allow(clippy::too_many_arguments)]
fn load_rec(
    path: &Path,
    text: String,
    loader: &dyn FileLoader,
    sources: &mut SourceMap,
    files: &mut Vec<(FileId, ast::File)>,
    diags: &mut Vec<Diagnostic>,
    stack: &mut Vec<PathBuf>,
    parse: &mut ParseFn<'_>,
) {
    let id = sources.add(path.display().to_string(), text.clone());
    let (file, mut d) = parse(id, &text);
    diags.append(&mut d);
    stack.push(path.to_path_buf());
    let imports: Vec<ast::Import> = file
        .items
        .iter()
        .filter_map(|i| match i {
            ast::Item::Import(imp) => Some(imp.clone()),
            _ => None,
        })
        .collect();
    files.push((id, file));
    let dir = path.parent().unwrap_or(Path::new(""));
    for imp in imports {
        let target = normalize(&dir.join(&imp.path));
        if let Some(pos) = stack.iter().position(|p| *p == target) {
            let mut chain: Vec<String> = stack[pos..].iter().map(|p| format!("`{}`", p.display())).collect();
            chain.push(format!("`{}`", target.display()));
            diags.push(
                Diagnostic::error("E0108", imp.path_span, "import cycle")
                    .label(format!("{} imports itself", target.display()))
                    .help(format!(
                        "the cycle is {}; move the shared declarations into a file both import",
                        chain.join(" -> ")
                    )),
            );
            continue;
        }
        if sources.find(&target.display().to_string()).is_some() {
            continue; // already loaded through another import
        }
        match loader.load(&target) {
            Ok(t) => load_rec(&target, t, loader, sources, files, diags, stack, parse),
            Err(e) => diags.push(
                Diagnostic::error("E0107", imp.path_span, format!("cannot import `{}`", imp.path))
                    .label(format!("{}: {e}", target.display()))
                    .help("import paths are relative to the importing file"),
            ),
        }
    }
    stack.pop();
}

/// Removes `.` and resolves `..` lexically, keeping the path relative if it was.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
