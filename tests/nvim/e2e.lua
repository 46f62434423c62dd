-- End-to-end test of `flowc lsp` with Neovim's built-in client, run headless by
-- tests/lsp.rs: `nvim --headless -u tests/nvim/e2e.lua FILE`. Environment:
-- FLOWC (the binary), FLOW_NVIM_CONFIG (editors/nvim/flow.lua), FLOW_NVIM_OUT (where
-- to write the diagnostics Neovim received, one JSON object per line).
local flow = dofile(os.getenv("FLOW_NVIM_CONFIG"))
flow.setup({ cmd = { os.getenv("FLOWC"), "lsp" } })

vim.api.nvim_create_autocmd("VimEnter", {
  callback = function()
    local buf = vim.api.nvim_get_current_buf()
    local ok = vim.wait(20000, function()
      return #vim.diagnostic.get(buf) > 0
    end, 20)
    local lines = {}
    if not ok then
      table.insert(lines, vim.fn.json_encode({ error = "no diagnostics within 20 s", filetype = vim.bo[buf].filetype }))
    end
    for _, d in ipairs(vim.diagnostic.get(buf)) do
      local code = d.code
      if code == nil and d.user_data and d.user_data.lsp then
        code = d.user_data.lsp.code
      end
      table.insert(lines, vim.fn.json_encode({
        code = code,
        lnum = d.lnum,
        col = d.col,
        severity = d.severity,
        message = d.message,
        source = d.source,
      }))
    end
    vim.fn.writefile(lines, os.getenv("FLOW_NVIM_OUT"))
    vim.cmd("qall!")
  end,
})
