//! Lowering a fused stateless stage to native code with cranelift.
//!
//! One function per stage loops over a whole batch:
//!
//! ```text
//! fn stage(ctx, in_rows, n, out_rows, arena, arena_len, lits, state) -> i32
//!   for i in 0..n: load the referenced fields of row i; run filters and projections;
//!                  if every filter passed, write output row k and k += 1
//!   state[0] = k; return 0            (or, on an error: state = [k, i, site]; return 1)
//! ```
//!
//! Inline: field loads and stores, null bits, int/float/timestamp arithmetic (checked),
//! decimal(p <= 18) `+` and `-`, exact decimal `*` and int -> wide decimal casts, `hour`,
//! comparisons of every scalar type, string equality and `starts_with`, `and`/`or`/
//! `??`/`if`/`case`/`in`/`is null`, int -> float casts, user fns (inlined). Through
//! helpers from `flow_stdlib::native`: other stdlib scalars, other decimal arithmetic, other
//! casts, lists and records, string ordering, float `%`, and copying a string into the
//! output arena when it is not already in the input's.
//!
//! A value is a null flag (`i8`, 1 = null) plus its payload: `i8` bool, `i64` int/
//! timestamp/duration/decimal(p <= 18), `f64`, `i128` decimal(p > 18), or (pointer,
//! length) for strings and encoded lists/records. A null's payload is unspecified, so
//! every operation that could trap or fail (division, overflow, helpers) is masked
//! by the null flags; stores write zero for nulls.

use super::stage::{mark_fields, shares_arena, Stage, StageSpec};
use super::{CompileError, EvalError};
use crate::ir::{self, BinOp, Expr, ExprKind, OpKind, UnOp};
use crate::source::Span;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Block, BlockArg, FuncRef, InstBuilder, MemFlagsData as MemFlags, StackSlotData, StackSlotKind,
    UserFuncName, Value as CV,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use flow_stdlib::native::{self as native, NativeCtx, NativeOp, Site, SLOT_BYTES};
use flow_stdlib::ops::{Arith, DIV_ZERO, INT_OVERFLOW};
use flow_types::row::{Batch, BatchBuilder, Layout, SlotKind};
use flow_types::{Kind, Type, Value};
use std::sync::Arc;

/// Code generation settings.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Run the cranelift verifier on the generated function (on in debug builds and tests).
    pub verifier: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { verifier: cfg!(debug_assertions) }
    }
}

fn cerr(span: Span, message: impl Into<String>) -> CompileError {
    CompileError { span, message: message.into() }
}

/// The Cranelift IR of a stage, as `flowc compile --emit clif` prints it.
pub fn clif(spec: &StageSpec, program: &ir::Program) -> Result<String, CompileError> {
    super::stage::validate(spec)?;
    let span = spec.ops.first().map(|o| o.span).unwrap_or_default();
    let mut module = new_module(Options { verifier: true }, span)?;
    let mut ctx = module.make_context();
    build(&mut module, &mut ctx, spec, program)?;
    Ok(ctx.func.display().to_string())
}

/// The Cranelift IR of every fused stage of every pipeline, each under a comment
/// naming its pipeline and operators (`flowc compile --emit clif`).
pub fn clif_program(program: &ir::Program) -> Result<String, CompileError> {
    let mut out = String::new();
    for p in &program.pipelines {
        for (n, spec) in super::stage::fused_stages(p).iter().enumerate() {
            out.push_str(&format!("; pipeline {} stage {n}\n", p.name));
            let mut input = spec.input.clone();
            for op in &spec.ops {
                out.push_str(&format!(";   {}\n", program.op_text(op, &input)));
                input = op.output.clone();
            }
            out.push_str(&clif(spec, program)?);
            out.push('\n');
        }
    }
    Ok(out)
}

pub(crate) fn new_module(opts: Options, span: Span) -> Result<JITModule, CompileError> {
    let mut flags = settings::builder();
    let set =
        |f: &mut settings::Builder, k: &str, v: &str| f.set(k, v).map_err(|e| cerr(span, format!("cranelift: {e}")));
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "enable_verifier", if opts.verifier { "true" } else { "false" })?;
    let isa = cranelift_native::builder()
        .map_err(|e| cerr(span, format!("cranelift: host not supported: {e}")))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| cerr(span, format!("cranelift: {e}")))?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    for (name, ptr) in native::symbols() {
        jb.symbol(name, ptr);
    }
    jb.symbol("flow_fmod", flow_fmod as *const u8);
    Ok(JITModule::new(jb))
}

extern "C" fn flow_fmod(a: f64, b: f64) -> f64 {
    a % b
}

/// Where an error can happen: its span and message (`None`: the helper's message).
#[derive(Clone, Debug)]
struct ErrSite {
    span: Span,
    message: Option<&'static str>,
}

/// What `build` produced besides the function.
struct Built {
    sites: Arc<[Site]>,
    errs: Vec<ErrSite>,
    lits: Vec<Box<[u8]>>,
}

/// A compiled stage.
pub struct JitStage {
    /// Keeps the code alive.
    _module: ModuleBox,
    func: StageFn,
    in_layout: Arc<Layout>,
    out_layout: Arc<Layout>,
    sites: Arc<[Site]>,
    errs: Vec<ErrSite>,
    /// (pointer, length) of each literal string, list or record; `_lit_bytes` owns them.
    lit_table: Vec<u64>,
    _lit_bytes: Vec<Box<[u8]>>,
}

type StageFn =
    unsafe extern "C" fn(*mut NativeCtx, *const u8, i64, *mut u8, *const u8, i64, *const u64, *mut i64) -> i32;

pub(crate) struct ModuleBox(#[allow(dead_code)] pub(crate) JITModule);
// SAFETY: after finalization the module is only kept to own the executable memory;
// nothing mutates it, and the code it holds is reentrant (all state is in arguments).
unsafe impl Send for ModuleBox {}
unsafe impl Sync for ModuleBox {}

/// Compiles a stage (validated by the caller).
pub fn compile(spec: &StageSpec, program: &ir::Program, opts: Options) -> Result<JitStage, CompileError> {
    let span = spec.ops.first().map(|o| o.span).unwrap_or_default();
    let mut module = new_module(opts, span)?;
    let mut ctx = module.make_context();
    let (id, built) = build(&mut module, &mut ctx, spec, program)?;
    module.define_function(id, &mut ctx).map_err(|e| cerr(span, format!("cranelift: {e:?}")))?;
    module.clear_context(&mut ctx);
    module.finalize_definitions().map_err(|e| cerr(span, format!("cranelift: {e}")))?;
    let code = module.get_finalized_function(id);
    // SAFETY: the function was built with exactly this signature.
    let func = unsafe { std::mem::transmute::<*const u8, StageFn>(code) };
    let lit_table = built.lits.iter().flat_map(|b| [b.as_ptr() as u64, b.len() as u64]).collect();
    Ok(JitStage {
        _module: ModuleBox(module),
        func,
        in_layout: Arc::new(Layout::new(spec.input.clone())),
        out_layout: Arc::new(Layout::new(spec.output())),
        sites: built.sites,
        errs: built.errs,
        lit_table,
        _lit_bytes: built.lits,
    })
}

impl Stage for JitStage {
    fn run(&self, input: &Batch, out: &mut BatchBuilder) -> Result<(), EvalError> {
        assert_eq!(*input.layout, *self.in_layout, "input batch of another layout");
        assert_eq!(*out.layout, *self.out_layout, "output builder of another layout");
        let n = input.len;
        if n == 0 {
            return Ok(());
        }
        // Strings already in the input arena are stored by offset only when the output
        // shares that arena; otherwise a zero arena length sends every one through the
        // copying helper.
        let arena = input.arena_bytes();
        let arena_len = if shares_arena(input, out) { arena.len() as i64 } else { 0 };
        let start = out.len();
        let w = self.out_layout.width as usize;
        let mut ctx = NativeCtx::new(self.sites.clone());
        let mut state = [0i64; 3];
        let status = {
            let (rows, extra, base_len) = out.raw_parts();
            rows.resize((start + n) * w, 0);
            ctx.out_extra = std::mem::take(extra);
            ctx.out_base_len = base_len as u64;
            // SAFETY: in_rows holds n rows of the input layout the code was built for;
            // out_rows has room for n output rows; arena and the literal table outlive
            // the call; ctx is a live NativeCtx.
            let status = unsafe {
                (self.func)(
                    &mut ctx,
                    input.rows.as_ptr(),
                    n as i64,
                    rows.as_mut_ptr().add(start * w),
                    arena.as_ptr(),
                    arena_len,
                    self.lit_table.as_ptr(),
                    state.as_mut_ptr(),
                )
            };
            let k = state[0] as usize;
            rows.truncate((start + k) * w);
            *extra = std::mem::take(&mut ctx.out_extra);
            status
        };
        out.set_len(start + state[0] as usize);
        if status == 0 {
            return Ok(());
        }
        let site = &self.errs[state[2] as usize];
        let message = match site.message {
            Some(m) => m.to_string(),
            None => ctx.error.take().unwrap_or_else(|| "error in a helper".into()),
        };
        Err(EvalError { span: site.span, message, row: state[1] as usize })
    }

    fn output_layout(&self) -> Arc<Layout> {
        self.out_layout.clone()
    }
}

// ---------------------------------------------------------------- building

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repr {
    Bool,
    I64,
    F64,
    I128,
    Bytes,
}

fn repr(t: &Type) -> Repr {
    match SlotKind::of(t) {
        SlotKind::Bool => Repr::Bool,
        SlotKind::I64 | SlotKind::Dec64 { .. } => Repr::I64,
        SlotKind::F64 => Repr::F64,
        SlotKind::Dec128 { .. } => Repr::I128,
        SlotKind::Str | SlotKind::Encoded => Repr::Bytes,
    }
}

/// A value in registers: null flag (i8) and payload.
#[derive(Clone, Copy, Debug)]
struct V {
    null: CV,
    a: CV,
    /// The length of a string or encoded value.
    b: Option<CV>,
}

struct Helpers {
    op: FuncRef,
    str_out: FuncRef,
    str_cmp: FuncRef,
    fmod: FuncRef,
}

struct Gen<'a, 'b> {
    fb: FunctionBuilder<'b>,
    program: &'a ir::Program,
    h: Helpers,
    sites: Vec<Site>,
    errs: Vec<ErrSite>,
    lits: Vec<Box<[u8]>>,
    /// Function parameters.
    ctx: CV,
    arena: CV,
    arena_len: CV,
    lit_table: CV,
    err_block: Block,
    /// Fields of the current operator's input.
    env: Vec<Option<V>>,
    /// Parameters of the user fns being inlined.
    params: Vec<Vec<V>>,
}

fn declare(
    module: &mut JITModule,
    name: &str,
    params: &[types::Type],
    ret: types::Type,
) -> Result<FuncId, CompileError> {
    let mut sig = module.make_signature();
    for p in params {
        sig.params.push(AbiParam::new(*p));
    }
    sig.returns.push(AbiParam::new(ret));
    module.declare_function(name, Linkage::Import, &sig).map_err(|e| cerr(Span::default(), format!("cranelift: {e}")))
}

fn build(
    module: &mut JITModule,
    ctx: &mut Context,
    spec: &StageSpec,
    program: &ir::Program,
) -> Result<(FuncId, Built), CompileError> {
    use types::{F64, I32, I64};
    let span = spec.ops.first().map(|o| o.span).unwrap_or_default();
    let op_id = declare(module, "flow_op", &[I64, I64, I64, I64, I64], I32)?;
    let out_id = declare(module, "flow_str_out", &[I64, I64, I64], I64)?;
    let cmp_id = declare(module, "flow_str_cmp", &[I64, I64, I64, I64], I64)?;
    let fmod_id = declare(module, "flow_fmod", &[F64, F64], F64)?;
    let mut sig = module.make_signature();
    for _ in 0..8 {
        sig.params.push(AbiParam::new(I64));
    }
    sig.returns.push(AbiParam::new(I32));
    let id =
        module.declare_function("stage", Linkage::Local, &sig).map_err(|e| cerr(span, format!("cranelift: {e}")))?;
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    let mut fctx = FunctionBuilderContext::new();
    let mut fb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let h = Helpers {
        op: module.declare_func_in_func(op_id, fb.func),
        str_out: module.declare_func_in_func(out_id, fb.func),
        str_cmp: module.declare_func_in_func(cmp_id, fb.func),
        fmod: module.declare_func_in_func(fmod_id, fb.func),
    };
    let entry = fb.create_block();
    fb.append_block_params_for_function_params(entry);
    let head = fb.create_block();
    let i = fb.append_block_param(head, I64);
    let k = fb.append_block_param(head, I64);
    let body = fb.create_block();
    let done = fb.create_block();
    let err_block = fb.create_block();
    let err_site = fb.append_block_param(err_block, I64);
    fb.set_cold_block(err_block);

    fb.switch_to_block(entry);
    let p = fb.block_params(entry).to_vec();
    let (ctxv, in_rows, n, out_rows, arena, arena_len, lit_table, state) =
        (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]);
    let zero = fb.ins().iconst(I64, 0);
    fb.ins().jump(head, &[BlockArg::Value(zero), BlockArg::Value(zero)]);

    fb.switch_to_block(head);
    let more = fb.ins().icmp(IntCC::SignedLessThan, i, n);
    fb.ins().brif(more, body, &[], done, &[]);

    fb.switch_to_block(done);
    fb.ins().store(MemFlags::trusted(), k, state, 0);
    let ok = fb.ins().iconst(I32, 0);
    fb.ins().return_(&[ok]);

    fb.switch_to_block(err_block);
    fb.ins().store(MemFlags::trusted(), k, state, 0);
    fb.ins().store(MemFlags::trusted(), i, state, 8);
    fb.ins().store(MemFlags::trusted(), err_site, state, 16);
    let one = fb.ins().iconst(I32, 1);
    fb.ins().return_(&[one]);

    fb.switch_to_block(body);
    let mut g = Gen {
        fb,
        program,
        h,
        sites: Vec::new(),
        errs: Vec::new(),
        lits: Vec::new(),
        ctx: ctxv,
        arena,
        arena_len,
        lit_table,
        err_block,
        env: Vec::new(),
        params: Vec::new(),
    };
    let in_layout = Layout::new(spec.input.clone());
    let in_w = g.fb.ins().iconst(I64, i64::from(in_layout.width));
    let off = g.fb.ins().imul(i, in_w);
    let row = g.fb.ins().iadd(in_rows, off);
    // Load every input field the stage reads before its first projection, up front, so
    // the loads dominate every use.
    let mut used = vec![false; in_layout.len()];
    for op in &spec.ops {
        match &op.kind {
            OpKind::Filter(c) => mark_fields(c, &mut used),
            OpKind::Project(items) => {
                items.iter().for_each(|(_, e)| mark_fields(e, &mut used));
                break;
            }
            _ => {}
        }
    }
    let passthrough = !spec.ops.iter().any(|o| matches!(o.kind, OpKind::Project(_)));
    g.env = (0..in_layout.len()).map(|f| (used[f] || passthrough).then(|| g.load_field(row, &in_layout, f))).collect();
    let i1 = g.fb.ins().iadd_imm_s(i, 1);
    for op in &spec.ops {
        match &op.kind {
            OpKind::Filter(c) => {
                let v = g.expr(c)?;
                let pass = g.truthy(v);
                let cont = g.fb.create_block();
                g.fb.ins().brif(pass, cont, &[], head, &[BlockArg::Value(i1), BlockArg::Value(k)]);
                g.fb.switch_to_block(cont);
            }
            OpKind::Project(items) => {
                let vals = items.iter().map(|(_, e)| g.expr(e)).collect::<Result<Vec<_>, _>>()?;
                g.env = vals.into_iter().map(Some).collect();
            }
            _ => return Err(cerr(op.span, "only filters and projections can be fused into a stateless stage")),
        }
    }
    // Write output row k.
    let out_layout = Layout::new(spec.output());
    let out_w = g.fb.ins().iconst(I64, i64::from(out_layout.width));
    let ooff = g.fb.ins().imul(k, out_w);
    let orow = g.fb.ins().iadd(out_rows, ooff);
    let vals: Vec<V> = g.env.iter().map(|v| v.expect("output field computed")).collect();
    let store_span = spec.ops.last().map(|o| o.span).unwrap_or_default();
    g.store_row(orow, &out_layout, &vals, store_span);
    let k1 = g.fb.ins().iadd_imm_s(k, 1);
    g.fb.ins().jump(head, &[BlockArg::Value(i1), BlockArg::Value(k1)]);
    g.fb.seal_all_blocks();
    let Gen { fb, sites, errs, lits, .. } = g;
    fb.finalize(module.target_config());
    Ok((id, Built { sites: sites.into(), errs, lits }))
}

impl<'b> Gen<'_, 'b> {
    fn ins(&mut self) -> cranelift_frontend::FuncInstBuilder<'_, 'b> {
        self.fb.ins()
    }

    fn iconst(&mut self, ty: types::Type, v: i64) -> CV {
        self.fb.ins().iconst(ty, v)
    }

    fn zero_of(&mut self, r: Repr) -> V {
        let null = self.iconst(types::I8, 1);
        self.payload_zero(r, null)
    }

    fn payload_zero(&mut self, r: Repr, null: CV) -> V {
        match r {
            Repr::Bool => V { null, a: self.iconst(types::I8, 0), b: None },
            Repr::I64 => V { null, a: self.iconst(types::I64, 0), b: None },
            Repr::F64 => V { null, a: self.fb.ins().f64const(0.0), b: None },
            Repr::I128 => {
                let z = self.iconst(types::I64, 0);
                V { null, a: self.fb.ins().iconcat(z, z), b: None }
            }
            Repr::Bytes => {
                let z = self.iconst(types::I64, 0);
                V { null, a: z, b: Some(z) }
            }
        }
    }

    /// Jumps to the error exit with `site` when `cond` (i8) is set.
    fn fail_if(&mut self, cond: CV, span: Span, message: Option<&'static str>) {
        self.errs.push(ErrSite { span, message });
        let site = self.iconst(types::I64, (self.errs.len() - 1) as i64);
        let cont = self.fb.create_block();
        let eb = self.err_block;
        self.fb.ins().brif(cond, eb, &[BlockArg::Value(site)], cont, &[]);
        self.fb.switch_to_block(cont);
    }

    /// Non-null and true.
    fn truthy(&mut self, v: V) -> CV {
        let nn = self.ins().bxor_imm_u(v.null, 1);
        self.ins().band(nn, v.a)
    }

    fn load_field(&mut self, row: CV, layout: &Layout, f: usize) -> V {
        let fl = MemFlags::trusted();
        let byte = self.ins().load(types::I8, fl, row, (f / 8) as i32);
        let sh = self.ins().ushr_imm_u(byte, (f % 8) as i64);
        let null = self.ins().band_imm_u(sh, 1);
        let o = layout.offsets[f] as i32;
        let notrap = MemFlags::new().with_notrap();
        match layout.slot_kinds[f] {
            SlotKind::Bool => {
                let a = self.ins().load(types::I8, fl, row, o);
                V { null, a, b: None }
            }
            SlotKind::I64 | SlotKind::Dec64 { .. } => V { null, a: self.ins().load(types::I64, fl, row, o), b: None },
            SlotKind::F64 => V { null, a: self.ins().load(types::F64, fl, row, o), b: None },
            SlotKind::Dec128 { .. } => V { null, a: self.ins().load(types::I128, notrap, row, o), b: None },
            SlotKind::Str | SlotKind::Encoded => {
                let off = self.ins().uload32(fl, row, o);
                let len = self.ins().uload32(fl, row, o + 4);
                let arena = self.arena;
                let a = self.ins().iadd(arena, off);
                V { null, a, b: Some(len) }
            }
        }
    }

    fn store_row(&mut self, row: CV, layout: &Layout, vals: &[V], span: Span) {
        use types::I64;
        let fl = MemFlags::trusted();
        // Null bitmap, one 64-bit word per 64 fields.
        for w in 0..layout.bitmap_bytes as usize / 8 {
            let mut word = self.iconst(I64, 0);
            for (f, v) in vals.iter().enumerate().skip(w * 64).take(64) {
                let bit = self.ins().uextend(I64, v.null);
                let bit = self.ins().ishl_imm_u(bit, (f % 64) as i64);
                word = self.ins().bor(word, bit);
            }
            self.ins().store(fl, word, row, (w * 8) as i32);
        }
        for (f, v) in vals.iter().enumerate() {
            let o = layout.offsets[f] as i32;
            let zero = self.iconst(I64, 0);
            match layout.slot_kinds[f] {
                SlotKind::Bool => {
                    let x = self.ins().uextend(I64, v.a);
                    let x = self.ins().select(v.null, zero, x);
                    self.ins().store(fl, x, row, o);
                }
                SlotKind::I64 | SlotKind::Dec64 { .. } => {
                    let x = self.ins().select(v.null, zero, v.a);
                    self.ins().store(fl, x, row, o);
                }
                SlotKind::F64 => {
                    let x = self.ins().bitcast(I64, MemFlags::new(), v.a);
                    let x = self.ins().select(v.null, zero, x);
                    self.ins().store(fl, x, row, o);
                }
                SlotKind::Dec128 { .. } => {
                    let (lo, hi) = self.ins().isplit(v.a);
                    let lo = self.ins().select(v.null, zero, lo);
                    let hi = self.ins().select(v.null, zero, hi);
                    self.ins().store(fl, lo, row, o);
                    self.ins().store(fl, hi, row, o + 8);
                }
                SlotKind::Str | SlotKind::Encoded => {
                    let len = v.b.expect("bytes length");
                    // In the shared arena: store the offset; else copy via the helper.
                    let (arena, arena_len) = (self.arena, self.arena_len);
                    let rel = self.ins().isub(v.a, arena);
                    let inside = self.ins().icmp(IntCC::UnsignedLessThan, rel, arena_len);
                    let fast = self.ins().bor(inside, v.null);
                    let slow_b = self.fb.create_block();
                    let merge = self.fb.create_block();
                    let off = self.fb.append_block_param(merge, I64);
                    self.fb.set_cold_block(slow_b);
                    self.ins().brif(fast, merge, &[BlockArg::Value(rel)], slow_b, &[]);
                    self.fb.switch_to_block(slow_b);
                    let (c, so) = (self.ctx, self.h.str_out);
                    let call = self.ins().call(so, &[c, v.a, len]);
                    let got = self.fb.inst_results(call)[0];
                    let full = self.ins().icmp_imm_s(IntCC::Equal, got, -1);
                    self.fail_if(full, span, Some("batch arena full"));
                    self.ins().jump(merge, &[BlockArg::Value(got)]);
                    self.fb.switch_to_block(merge);
                    let hi = self.ins().ishl_imm_u(len, 32);
                    let packed = self.ins().bor(off, hi);
                    let x = self.ins().select(v.null, zero, packed);
                    self.ins().store(fl, x, row, o);
                }
            }
        }
    }

    /// A block whose parameters hold a value of `r`, and that value.
    fn merge_block(&mut self, r: Repr) -> (Block, V) {
        let b = self.fb.create_block();
        let null = self.fb.append_block_param(b, types::I8);
        let (a, len) = match r {
            Repr::Bool => (self.fb.append_block_param(b, types::I8), None),
            Repr::I64 => (self.fb.append_block_param(b, types::I64), None),
            Repr::F64 => (self.fb.append_block_param(b, types::F64), None),
            Repr::I128 => (self.fb.append_block_param(b, types::I128), None),
            Repr::Bytes => (self.fb.append_block_param(b, types::I64), Some(self.fb.append_block_param(b, types::I64))),
        };
        (b, V { null, a, b: len })
    }

    fn args_of(v: V) -> Vec<BlockArg> {
        let mut a = vec![BlockArg::Value(v.null), BlockArg::Value(v.a)];
        if let Some(b) = v.b {
            a.push(BlockArg::Value(b));
        }
        a
    }

    fn jump_with(&mut self, to: Block, v: V) {
        self.ins().jump(to, &Self::args_of(v));
    }

    fn literal(&mut self, v: &Value, ty: &Type) -> V {
        let r = repr(ty);
        let null = self.iconst(types::I8, 0);
        match v {
            Value::Null => self.zero_of(r),
            Value::Bool(b) => V { null, a: self.iconst(types::I8, i64::from(*b)), b: None },
            Value::Int(i) | Value::Timestamp(i) | Value::Duration(i) => {
                V { null, a: self.iconst(types::I64, *i), b: None }
            }
            Value::Float(x) => V { null, a: self.fb.ins().f64const(*x), b: None },
            Value::Decimal { units, .. } => match r {
                Repr::I128 => {
                    let lo = self.iconst(types::I64, *units as i64);
                    let hi = self.iconst(types::I64, (*units >> 64) as i64);
                    V { null, a: self.ins().iconcat(lo, hi), b: None }
                }
                _ => V { null, a: self.iconst(types::I64, *units as i64), b: None },
            },
            Value::String(_) | Value::List(_) | Value::Record(_) => {
                let bytes: Box<[u8]> = match v {
                    Value::String(s) => s.as_bytes().into(),
                    _ => {
                        let mut buf = Vec::new();
                        flow_types::row::encode_value(v, &mut buf);
                        buf.into()
                    }
                };
                let idx = self.lits.len() as i32;
                self.lits.push(bytes);
                let fl = MemFlags::trusted().with_readonly();
                let t = self.lit_table;
                let a = self.ins().load(types::I64, fl, t, idx * 16);
                let b = self.ins().load(types::I64, fl, t, idx * 16 + 8);
                V { null, a, b: Some(b) }
            }
        }
    }

    /// Calls `flow_op` for `op` on `args` (of types `tys`) returning `ret`.
    fn helper(&mut self, op: NativeOp, args: &[V], tys: Vec<Type>, ret: &Type, span: Span) -> V {
        use types::I64;
        self.sites.push(Site::new(op, tys.clone(), ret.clone()));
        let site = (self.sites.len() - 1) as i64;
        let n = args.len().max(1) as u32;
        let ss = self.fb.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, n * SLOT_BYTES, 3));
        let out = self.fb.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, SLOT_BYTES, 3));
        let fl = MemFlags::trusted();
        for (j, (v, t)) in args.iter().zip(&tys).enumerate() {
            let base = (j as u32 * SLOT_BYTES) as i32;
            let null = self.ins().uextend(I64, v.null);
            self.ins().stack_store(I64, null, ss, base);
            match repr(t) {
                Repr::Bool => {
                    let a = self.ins().uextend(I64, v.a);
                    self.ins().stack_store(I64, a, ss, base + 8);
                }
                Repr::I64 => {
                    self.ins().stack_store(I64, v.a, ss, base + 8);
                }
                Repr::F64 => {
                    let a = self.ins().bitcast(I64, MemFlags::new(), v.a);
                    self.ins().stack_store(I64, a, ss, base + 8);
                }
                Repr::I128 => {
                    let (lo, hi) = self.ins().isplit(v.a);
                    self.ins().stack_store(I64, lo, ss, base + 8);
                    self.ins().stack_store(I64, hi, ss, base + 16);
                }
                Repr::Bytes => {
                    self.ins().stack_store(I64, v.a, ss, base + 8);
                    self.ins().stack_store(I64, v.b.expect("length"), ss, base + 16);
                }
            }
        }
        let ptr = self.ins().stack_addr(I64, ss, 0);
        let optr = self.ins().stack_addr(I64, out, 0);
        let sitev = self.iconst(I64, site);
        let nv = self.iconst(I64, args.len() as i64);
        let (c, f) = (self.ctx, self.h.op);
        let call = self.ins().call(f, &[c, sitev, ptr, nv, optr]);
        let status = self.fb.inst_results(call)[0];
        self.fail_if(status, span, None);
        let null64 = self.ins().load(I64, fl, optr, 0);
        let null = self.ins().ireduce(types::I8, null64);
        let a = self.ins().load(I64, fl, optr, 8);
        let b = self.ins().load(I64, fl, optr, 16);
        match repr(ret) {
            Repr::Bool => V { null, a: self.ins().ireduce(types::I8, a), b: None },
            Repr::I64 => V { null, a, b: None },
            Repr::F64 => V { null, a: self.ins().bitcast(types::F64, MemFlags::new(), a), b: None },
            Repr::I128 => V { null, a: self.ins().iconcat(a, b), b: None },
            Repr::Bytes => V { null, a, b: Some(b) },
        }
    }

    fn exprs(&mut self, es: &[Expr]) -> Result<Vec<V>, CompileError> {
        es.iter().map(|e| self.expr(e)).collect()
    }

    fn expr(&mut self, e: &Expr) -> Result<V, CompileError> {
        let r = repr(&e.ty);
        Ok(match &e.kind {
            ExprKind::Literal(v) => self.literal(v, &e.ty),
            ExprKind::Field(i) => match self.env.get(*i).copied().flatten() {
                Some(v) => v,
                None => return Err(cerr(e.span, format!("field {i} is not available here"))),
            },
            ExprKind::Param(i) => match self.params.last().and_then(|p| p.get(*i)).copied() {
                Some(v) => v,
                None => return Err(cerr(e.span, "parameter outside a fn")),
            },
            ExprKind::Step(_) | ExprKind::Agg(_) => return Err(cerr(e.span, "not available in a stateless stage")),
            ExprKind::GetField(x, i) | ExprKind::SafeGetField(x, i) => {
                let v = self.expr(x)?;
                self.helper(NativeOp::GetField(*i), &[v], vec![x.ty.clone()], &e.ty, e.span)
            }
            ExprKind::Index(l, i) => {
                let args = [self.expr(l)?, self.expr(i)?];
                self.helper(NativeOp::Index, &args, vec![l.ty.clone(), i.ty.clone()], &e.ty, e.span)
            }
            ExprKind::List(items) | ExprKind::Record(items) => {
                let args = self.exprs(items)?;
                let op = if matches!(e.kind, ExprKind::List(_)) { NativeOp::MakeList } else { NativeOp::MakeRecord };
                self.helper(op, &args, items.iter().map(|i| i.ty.clone()).collect(), &e.ty, e.span)
            }
            ExprKind::Unary(UnOp::Not, x) => {
                let v = self.expr(x)?;
                V { null: v.null, a: self.ins().bxor_imm_u(v.a, 1), b: None }
            }
            ExprKind::Unary(UnOp::Neg, x) => {
                let v = self.expr(x)?;
                match r {
                    Repr::F64 => V { null: v.null, a: self.ins().fneg(v.a), b: None },
                    Repr::I128 => V { null: v.null, a: self.ins().ineg(v.a), b: None },
                    _ if matches!(x.ty.kind, Kind::Decimal { .. }) => {
                        V { null: v.null, a: self.ins().ineg(v.a), b: None }
                    }
                    _ => {
                        let z = self.iconst(types::I64, 0);
                        let (a, of) = self.ins().ssub_overflow(z, v.a);
                        let nn = self.ins().bxor_imm_u(v.null, 1);
                        let bad = self.ins().band(of, nn);
                        self.fail_if(bad, e.span, Some(INT_OVERFLOW));
                        V { null: v.null, a, b: None }
                    }
                }
            }
            ExprKind::Binary(op, a, b) => self.binary(e, *op, a, b)?,
            ExprKind::Call(name, args) => self.call(e, name, args)?,
            ExprKind::CallFn(idx, args) => {
                let vals = self.exprs(args)?;
                let f = self.program.fns.get(*idx).ok_or_else(|| cerr(e.span, "unknown fn"))?;
                self.params.push(vals);
                let v = self.expr(&f.body);
                self.params.pop();
                v?
            }
            ExprKind::If(c, t, x) => {
                let cv = self.expr(c)?;
                let take = self.truthy(cv);
                let (tb, xb) = (self.fb.create_block(), self.fb.create_block());
                let (merge, out) = self.merge_block(r);
                self.ins().brif(take, tb, &[], xb, &[]);
                self.fb.switch_to_block(tb);
                let tv = self.expr(t)?;
                self.jump_with(merge, tv);
                self.fb.switch_to_block(xb);
                let xv = self.expr(x)?;
                self.jump_with(merge, xv);
                self.fb.switch_to_block(merge);
                out
            }
            ExprKind::Case { arms, otherwise } => {
                let (merge, out) = self.merge_block(r);
                for (w, t) in arms {
                    let wv = self.expr(w)?;
                    let take = self.truthy(wv);
                    let (tb, next) = (self.fb.create_block(), self.fb.create_block());
                    self.ins().brif(take, tb, &[], next, &[]);
                    self.fb.switch_to_block(tb);
                    let tv = self.expr(t)?;
                    self.jump_with(merge, tv);
                    self.fb.switch_to_block(next);
                }
                let ov = match otherwise {
                    Some(o) => self.expr(o)?,
                    None => self.zero_of(r),
                };
                self.jump_with(merge, ov);
                self.fb.switch_to_block(merge);
                out
            }
            ExprKind::Cast(x) => self.cast(e, x)?,
            ExprKind::In { expr: x, list, negated } => {
                let v = self.expr(x)?;
                let items = self.exprs(list)?;
                let mut found = self.iconst(types::I8, 0);
                let mut any_null = self.iconst(types::I8, 0);
                for (it, ie) in items.iter().zip(list) {
                    let eq = self.compare(BinOp::Eq, v, *it, &ie.ty, e.span);
                    let nn = self.ins().bxor_imm_u(it.null, 1);
                    let hit = self.ins().band(eq, nn);
                    found = self.ins().bor(found, hit);
                    any_null = self.ins().bor(any_null, it.null);
                }
                let nf = self.ins().bxor_imm_u(found, 1);
                let unknown = self.ins().band(nf, any_null);
                let null = self.ins().bor(v.null, unknown);
                let a = if *negated { self.ins().bxor_imm_u(found, 1) } else { found };
                V { null, a, b: None }
            }
            ExprKind::IsNull { expr: x, negated } => {
                let v = self.expr(x)?;
                let a = if *negated { self.ins().bxor_imm_u(v.null, 1) } else { v.null };
                V { null: self.iconst(types::I8, 0), a, b: None }
            }
        })
    }

    fn call(&mut self, e: &Expr, name: &'static str, args: &[Expr]) -> Result<V, CompileError> {
        let vals = self.exprs(args)?;
        if name == "starts_with" && vals.len() == 2 {
            // Inline: len(p) <= len(s) and the first len(p) bytes are equal.
            let (s, p) = (vals[0], vals[1]);
            let (sl, pl) = (s.b.expect("len"), p.b.expect("len"));
            let fits = self.ins().icmp(IntCC::UnsignedLessThanOrEqual, pl, sl);
            let eq = self.bytes_eq_guarded(fits, s.a, p.a, pl);
            let null = self.ins().bor(s.null, p.null);
            return Ok(V { null, a: eq, b: None });
        }
        if name == "length" && vals.len() == 1 && matches!(args[0].ty.kind, Kind::String) {
            // Inline: the bytes that do not continue a character (valid UTF-8: the
            // characters), eight at a time. A null string's length is never read.
            let s = vals[0];
            let zero = self.iconst(types::I64, 0);
            let n = self.ins().select(s.null, zero, s.b.expect("len"));
            let count = self.char_count(s.a, n);
            return Ok(V { null: s.null, a: count, b: None });
        }
        if name == "hour" && vals.len() == 1 {
            // Inline: ms.rem_euclid(one day) / one hour (no trap: constant divisors).
            let t = vals[0];
            const DAY: i64 = 86_400_000;
            let r = self.ins().srem_imm_s(t.a, DAY);
            let neg = self.ins().icmp_imm_s(IntCC::SignedLessThan, r, 0);
            let up = self.ins().iadd_imm_s(r, DAY);
            let r = self.ins().select(neg, up, r);
            let h = self.ins().sdiv_imm_s(r, 3_600_000);
            return Ok(V { null: t.null, a: h, b: None });
        }
        let tys = args.iter().map(|a| a.ty.clone()).collect();
        Ok(self.helper(NativeOp::Scalar(name), &vals, tys, &e.ty, e.span))
    }

    fn cast(&mut self, e: &Expr, x: &Expr) -> Result<V, CompileError> {
        if let ExprKind::Literal(lit) = &x.kind {
            // Folded at compile time (`amount > 0.0` compares with a decimal constant);
            // a cast that fails is left to run time, where it reports its error.
            let site = Site::new(NativeOp::Cast, vec![x.ty.clone()], e.ty.clone());
            if let Ok(v) = native::apply(&site, std::slice::from_ref(lit)) {
                return Ok(self.literal(&v, &e.ty));
            }
        }
        let v = self.expr(x)?;
        Ok(match (&x.ty.kind, &e.ty.kind) {
            (Kind::Int, Kind::Float) => V { null: v.null, a: self.ins().fcvt_from_sint(types::F64, v.a), b: None },
            (Kind::Int | Kind::Timestamp | Kind::Duration, Kind::Int | Kind::Timestamp | Kind::Duration) => v,
            (Kind::Bool, Kind::Int) => V { null: v.null, a: self.ins().uextend(types::I64, v.a), b: None },
            // int -> decimal(p, s) with p - s >= 19 digits for the integer part: every
            // int fits, so the cast is a widening multiply by 10^s.
            (Kind::Int, Kind::Decimal { precision, scale })
                if *precision > 18 && *precision <= 38 && precision - scale >= 19 && *scale <= 18 =>
            {
                let wide = self.ins().sextend(types::I128, v.a);
                let a = if *scale == 0 {
                    wide
                } else {
                    let k = self.iconst(types::I64, 10i64.pow(u32::from(*scale)));
                    let k = self.ins().sextend(types::I128, k);
                    self.ins().imul(wide, k)
                };
                V { null: v.null, a, b: None }
            }
            _ => self.helper(NativeOp::Cast, &[v], vec![x.ty.clone()], &e.ty, e.span),
        })
    }

    /// The characters of the `n` bytes of valid UTF-8 at `p`: the bytes that are not
    /// `10xxxxxx`, counted a word at a time (bit 7 set and bit 6 clear marks a
    /// continuation byte; popcnt counts them), then byte by byte.
    fn char_count(&mut self, p: CV, n: CV) -> CV {
        use types::{I64, I8};
        let head = self.fb.create_block();
        let j = self.fb.append_block_param(head, I64);
        let acc = self.fb.append_block_param(head, I64);
        let words = self.fb.create_block();
        let tail = self.fb.create_block();
        let tj = self.fb.append_block_param(tail, I64);
        let tacc = self.fb.append_block_param(tail, I64);
        let tail_body = self.fb.create_block();
        let done = self.fb.create_block();
        let res = self.fb.append_block_param(done, I64);
        let zero = self.iconst(I64, 0);
        self.ins().jump(head, &[BlockArg::Value(zero), BlockArg::Value(zero)]);
        self.fb.switch_to_block(head);
        let j8 = self.ins().iadd_imm_s(j, 8);
        let room = self.ins().icmp(IntCC::UnsignedLessThanOrEqual, j8, n);
        self.ins().brif(room, words, &[], tail, &[BlockArg::Value(j), BlockArg::Value(acc)]);
        self.fb.switch_to_block(words);
        let fl = MemFlags::new().with_notrap().with_readonly();
        let pj = self.ins().iadd(p, j);
        let w = self.ins().load(I64, fl, pj, 0);
        let shifted = self.ins().ishl_imm_u(w, 1);
        let not_bit6 = self.ins().bnot(shifted);
        let cont = self.ins().band(w, not_bit6);
        let cont = self.ins().band_imm_s(cont, 0x8080_8080_8080_8080u64 as i64);
        let conts = self.ins().popcnt(cont);
        let eight = self.iconst(I64, 8);
        let chars = self.ins().isub(eight, conts);
        let acc8 = self.ins().iadd(acc, chars);
        self.ins().jump(head, &[BlockArg::Value(j8), BlockArg::Value(acc8)]);
        self.fb.switch_to_block(tail);
        let more = self.ins().icmp(IntCC::UnsignedLessThan, tj, n);
        self.ins().brif(more, tail_body, &[], done, &[BlockArg::Value(tacc)]);
        self.fb.switch_to_block(tail_body);
        let pj = self.ins().iadd(p, tj);
        let b = self.ins().load(I8, fl, pj, 0);
        let starts = self.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, b, -64);
        let one = self.ins().uextend(I64, starts);
        let tacc1 = self.ins().iadd(tacc, one);
        let tj1 = self.ins().iadd_imm_s(tj, 1);
        self.ins().jump(tail, &[BlockArg::Value(tj1), BlockArg::Value(tacc1)]);
        self.fb.switch_to_block(done);
        res
    }

    /// Bytes `[a, a+n)` and `[b, b+n)` are equal; only read when `guard` is set
    /// (the result is 0 otherwise). An inline byte loop, 8 bytes at a time.
    fn bytes_eq_guarded(&mut self, guard: CV, a: CV, b: CV, n: CV) -> CV {
        use types::{I64, I8};
        let head = self.fb.create_block();
        let j = self.fb.append_block_param(head, I64);
        let words = self.fb.create_block();
        let tail = self.fb.create_block();
        let tj = self.fb.append_block_param(tail, I64);
        let tail_body = self.fb.create_block();
        let (done, res) = {
            let d = self.fb.create_block();
            let r = self.fb.append_block_param(d, I8);
            (d, r)
        };
        let zero = self.iconst(I64, 0);
        let f = self.iconst(I8, 0);
        let t = self.iconst(I8, 1);
        self.ins().brif(guard, head, &[BlockArg::Value(zero)], done, &[BlockArg::Value(f)]);
        // 8-byte steps while j + 8 <= n.
        self.fb.switch_to_block(head);
        let j8 = self.ins().iadd_imm_s(j, 8);
        let room = self.ins().icmp(IntCC::UnsignedLessThanOrEqual, j8, n);
        self.ins().brif(room, words, &[], tail, &[BlockArg::Value(j)]);
        self.fb.switch_to_block(words);
        let pa = self.ins().iadd(a, j);
        let pb = self.ins().iadd(b, j);
        let fl = MemFlags::new().with_notrap().with_readonly();
        let wa = self.ins().load(I64, fl, pa, 0);
        let wb = self.ins().load(I64, fl, pb, 0);
        let same = self.ins().icmp(IntCC::Equal, wa, wb);
        self.ins().brif(same, head, &[BlockArg::Value(j8)], done, &[BlockArg::Value(f)]);
        // Then byte steps.
        self.fb.switch_to_block(tail);
        let more = self.ins().icmp(IntCC::UnsignedLessThan, tj, n);
        self.ins().brif(more, tail_body, &[], done, &[BlockArg::Value(t)]);
        self.fb.switch_to_block(tail_body);
        let pa = self.ins().iadd(a, tj);
        let pb = self.ins().iadd(b, tj);
        let ba = self.ins().load(I8, fl, pa, 0);
        let bb = self.ins().load(I8, fl, pb, 0);
        let same = self.ins().icmp(IntCC::Equal, ba, bb);
        let tj1 = self.ins().iadd_imm_s(tj, 1);
        self.ins().brif(same, tail, &[BlockArg::Value(tj1)], done, &[BlockArg::Value(f)]);
        self.fb.switch_to_block(done);
        res
    }

    /// A comparison of two values of type `ty` (the payload only; nulls are the
    /// caller's). Returns an i8 0/1.
    fn compare(&mut self, op: BinOp, l: V, r: V, ty: &Type, span: Span) -> CV {
        let icc = match op {
            BinOp::Eq => IntCC::Equal,
            BinOp::Ne => IntCC::NotEqual,
            BinOp::Lt => IntCC::SignedLessThan,
            BinOp::Le => IntCC::SignedLessThanOrEqual,
            BinOp::Gt => IntCC::SignedGreaterThan,
            _ => IntCC::SignedGreaterThanOrEqual,
        };
        match (repr(ty), &ty.kind) {
            (Repr::F64, _) => {
                let fcc = match op {
                    BinOp::Eq => FloatCC::Equal,
                    BinOp::Ne => FloatCC::NotEqual,
                    BinOp::Lt => FloatCC::LessThan,
                    BinOp::Le => FloatCC::LessThanOrEqual,
                    BinOp::Gt => FloatCC::GreaterThan,
                    _ => FloatCC::GreaterThanOrEqual,
                };
                self.ins().fcmp(fcc, l.a, r.a)
            }
            (Repr::Bool, _) => {
                let ucc = match op {
                    BinOp::Lt => IntCC::UnsignedLessThan,
                    BinOp::Le => IntCC::UnsignedLessThanOrEqual,
                    BinOp::Gt => IntCC::UnsignedGreaterThan,
                    BinOp::Ge => IntCC::UnsignedGreaterThanOrEqual,
                    _ => icc,
                };
                self.ins().icmp(ucc, l.a, r.a)
            }
            (Repr::I64 | Repr::I128, _) => self.ins().icmp(icc, l.a, r.a),
            (Repr::Bytes, Kind::String) if matches!(op, BinOp::Eq | BinOp::Ne) => {
                let (ll, rl) = (l.b.expect("len"), r.b.expect("len"));
                let same_len = self.ins().icmp(IntCC::Equal, ll, rl);
                let eq = self.bytes_eq_guarded(same_len, l.a, r.a, ll);
                if op == BinOp::Eq {
                    eq
                } else {
                    self.ins().bxor_imm_u(eq, 1)
                }
            }
            (Repr::Bytes, Kind::String) => {
                // Ordering: a helper on valid pointers; a null's pointer may be junk.
                let both = self.ins().bor(l.null, r.null);
                let z = self.iconst(types::I64, 0);
                let (la, ll) = (self.ins().select(both, z, l.a), self.ins().select(both, z, l.b.expect("len")));
                let (ra, rl) = (self.ins().select(both, z, r.a), self.ins().select(both, z, r.b.expect("len")));
                let f = self.h.str_cmp;
                let call = self.ins().call(f, &[la, ll, ra, rl]);
                let c = self.fb.inst_results(call)[0];
                self.ins().icmp_imm_s(icc, c, 0)
            }
            _ => {
                // Lists and records: equality through the helper (2 = unequal).
                let nl = V { null: self.iconst(types::I8, 0), ..l };
                let nr = V { null: self.iconst(types::I8, 0), ..r };
                let both = self.ins().bor(l.null, r.null);
                let z = self.iconst(types::I64, 0);
                let nl =
                    V { a: self.ins().select(both, z, nl.a), b: nl.b.map(|b| self.ins().select(both, z, b)), ..nl };
                let nr =
                    V { a: self.ins().select(both, z, nr.a), b: nr.b.map(|b| self.ins().select(both, z, b)), ..nr };
                let c = self.helper(NativeOp::Compare, &[nl, nr], vec![ty.clone(), ty.clone()], &Type::int(), span);
                let eq = self.ins().icmp_imm_s(IntCC::Equal, c.a, 0);
                if op == BinOp::Ne {
                    self.ins().bxor_imm_u(eq, 1)
                } else {
                    eq
                }
            }
        }
    }

    /// `x * 10^k` (k <= 18; the caller knows it cannot overflow).
    fn scale_up(&mut self, x: CV, k: u8) -> CV {
        if k == 0 {
            x
        } else {
            self.ins().imul_imm_s(x, 10i64.pow(u32::from(k)))
        }
    }

    fn binary(&mut self, e: &Expr, op: BinOp, a: &Expr, b: &Expr) -> Result<V, CompileError> {
        use types::{I64, I8};
        match op {
            BinOp::And | BinOp::Or => {
                let decide = i64::from(op == BinOp::Or);
                let l = self.expr(a)?;
                let is_decide = self.ins().icmp_imm_s(IntCC::Equal, l.a, decide);
                let nn = self.ins().bxor_imm_u(l.null, 1);
                let decided = self.ins().band(nn, is_decide);
                let (merge, out) = self.merge_block(Repr::Bool);
                let rhs = self.fb.create_block();
                let z = self.iconst(I8, 0);
                let dv = self.iconst(I8, decide);
                self.ins().brif(decided, merge, &[BlockArg::Value(z), BlockArg::Value(dv)], rhs, &[]);
                self.fb.switch_to_block(rhs);
                let r = self.expr(b)?;
                let r_dec = self.ins().icmp_imm_s(IntCC::Equal, r.a, decide);
                let rnn = self.ins().bxor_imm_u(r.null, 1);
                let r_decided = self.ins().band(rnn, r_dec);
                let any_null = self.ins().bor(l.null, r.null);
                let nd = self.ins().bxor_imm_u(r_decided, 1);
                let null = self.ins().band(any_null, nd);
                let dv = self.iconst(I8, decide);
                let a = self.ins().select(r_decided, dv, r.a);
                self.ins().jump(merge, &[BlockArg::Value(null), BlockArg::Value(a)]);
                self.fb.switch_to_block(merge);
                return Ok(out);
            }
            BinOp::Coalesce => {
                let l = self.expr(a)?;
                let (merge, out) = self.merge_block(repr(&e.ty));
                let rhs = self.fb.create_block();
                self.ins().brif(l.null, rhs, &[], merge, &Self::args_of(l));
                self.fb.switch_to_block(rhs);
                let r = self.expr(b)?;
                self.jump_with(merge, r);
                self.fb.switch_to_block(merge);
                return Ok(out);
            }
            _ => {}
        }
        let l = self.expr(a)?;
        let r = self.expr(b)?;
        let null = self.ins().bor(l.null, r.null);
        if matches!(op, BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge) {
            let v = self.compare(op, l, r, &a.ty, e.span);
            return Ok(V { null, a: v, b: None });
        }
        let arith = match op {
            BinOp::Add => Arith::Add,
            BinOp::Sub => Arith::Sub,
            BinOp::Mul => Arith::Mul,
            BinOp::Div => Arith::Div,
            _ => Arith::Rem,
        };
        if let (
            Kind::Decimal { precision: p1, scale: s1 },
            Kind::Decimal { precision: p2, scale: s2 },
            Kind::Decimal { precision: p, scale: s },
        ) = (&a.ty.kind, &b.ty.kind, &e.ty.kind)
        {
            if matches!(arith, Arith::Add | Arith::Sub) && *p1 <= 18 && *p2 <= 18 && *p <= 18 {
                // Inline: align both to the result scale (no i64 overflow: the aligned
                // operands have fewer than p digits), add, check the precision.
                let live = self.ins().bxor_imm_u(null, 1);
                let la = self.scale_up(l.a, s - s1);
                let rb = self.scale_up(r.a, s - s2);
                let v = if arith == Arith::Add { self.ins().iadd(la, rb) } else { self.ins().isub(la, rb) };
                let bound = 10i64.pow(u32::from(*p));
                let hi = self.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, v, bound);
                let lo = self.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, v, -bound);
                let over = self.ins().bor(hi, lo);
                let bad = self.ins().band(over, live);
                self.fail_if(bad, e.span, Some(flow_stdlib::ops::DEC_OVERFLOW));
                return Ok(V { null, a: v, b: None });
            }
        }
        if let (
            Kind::Decimal { precision: p1, scale: s1 },
            Kind::Decimal { precision: p2, scale: s2 },
            Kind::Decimal { precision: p, scale: s },
        ) = (&a.ty.kind, &b.ty.kind, &e.ty.kind)
        {
            if arith == Arith::Mul && u32::from(*s) == u32::from(*s1) + u32::from(*s2) && p1 + p2 <= *p && *p <= 38 {
                // Inline: the exact product has scale s1 + s2 = s and fewer than
                // p1 + p2 <= p digits, so it needs no rounding and cannot overflow.
                let widen =
                    |me: &mut Self, x: CV, prec: u8| if prec <= 18 { me.ins().sextend(types::I128, x) } else { x };
                let la = widen(self, l.a, *p1);
                let rb = widen(self, r.a, *p2);
                let prod = self.ins().imul(la, rb);
                let v = if *p <= 18 { self.ins().ireduce(types::I64, prod) } else { prod };
                return Ok(V { null, a: v, b: None });
            }
        }
        if let (Kind::Decimal { .. }, Kind::Decimal { .. }) = (&a.ty.kind, &b.ty.kind) {
            let tys = vec![a.ty.clone().nullable(), b.ty.clone().nullable()];
            return Ok(self.helper(NativeOp::DecArith(arith), &[l, r], tys, &e.ty, e.span));
        }
        if repr(&e.ty) == Repr::F64 {
            let v = match arith {
                Arith::Add => self.ins().fadd(l.a, r.a),
                Arith::Sub => self.ins().fsub(l.a, r.a),
                Arith::Mul => self.ins().fmul(l.a, r.a),
                Arith::Div => self.ins().fdiv(l.a, r.a),
                Arith::Rem => {
                    let f = self.h.fmod;
                    let call = self.ins().call(f, &[l.a, r.a]);
                    self.fb.inst_results(call)[0]
                }
            };
            return Ok(V { null, a: v, b: None });
        }
        // Ints, timestamps and durations: checked i64, errors only for non-null operands.
        let live = self.ins().bxor_imm_u(null, 1);
        let v = match arith {
            Arith::Add | Arith::Sub | Arith::Mul => {
                let (v, of) = match arith {
                    Arith::Add => self.ins().sadd_overflow(l.a, r.a),
                    Arith::Sub => self.ins().ssub_overflow(l.a, r.a),
                    _ => self.ins().smul_overflow(l.a, r.a),
                };
                let bad = self.ins().band(of, live);
                self.fail_if(bad, e.span, Some(INT_OVERFLOW));
                v
            }
            Arith::Div | Arith::Rem => {
                let is_zero = self.ins().icmp_imm_s(IntCC::Equal, r.a, 0);
                let bad = self.ins().band(is_zero, live);
                self.fail_if(bad, e.span, Some(DIV_ZERO));
                let minus_one = self.ins().icmp_imm_s(IntCC::Equal, r.a, -1);
                if arith == Arith::Div {
                    let is_min = self.ins().icmp_imm_s(IntCC::Equal, l.a, i64::MIN);
                    let of = self.ins().band(is_min, minus_one);
                    let bad = self.ins().band(of, live);
                    self.fail_if(bad, e.span, Some(INT_OVERFLOW));
                }
                // A divisor that cannot trap: 1 for 0 and -1 (handled apart), and nulls.
                let odd = self.ins().bor(is_zero, minus_one);
                let one = self.iconst(I64, 1);
                let d = self.ins().select(odd, one, r.a);
                if arith == Arith::Div {
                    let q = self.ins().sdiv(l.a, d);
                    let neg = self.ins().ineg(l.a);
                    self.ins().select(minus_one, neg, q)
                } else {
                    let m = self.ins().srem(l.a, d);
                    let z = self.iconst(I64, 0);
                    self.ins().select(minus_one, z, m)
                }
            }
        };
        Ok(V { null, a: v, b: None })
    }
}
