-- Neovim support for .flow files: filetype, comments, and the built-in LSP client
-- running `flowc lsp`. Works with Neovim 0.7 and later.
--
-- Use: put this file on your runtimepath as lua/flow.lua (or `dofile` it) and call
--   require("flow").setup()                      -- `flowc` on PATH
--   require("flow").setup({ cmd = { "/path/to/flowc", "lsp" } })
local M = {}

local function root_dir(path)
  -- The nearest directory with a .git, else the file's directory.
  local dir = vim.fn.fnamemodify(path, ":p:h")
  local git = vim.fn.finddir(".git", dir .. ";")
  if git ~= "" then
    return vim.fn.fnamemodify(git, ":p:h:h")
  end
  return dir
end

function M.setup(opts)
  opts = opts or {}
  local cmd = opts.cmd or { "flowc", "lsp" }
  local clients = {}
  local group = vim.api.nvim_create_augroup("flow_lsp", { clear = true })
  vim.api.nvim_create_autocmd({ "BufRead", "BufNewFile" }, {
    group = group,
    pattern = "*.flow",
    callback = function(args)
      vim.bo[args.buf].filetype = "flow"
    end,
  })
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    pattern = "flow",
    callback = function(args)
      local buf = args.buf
      vim.bo[buf].commentstring = "// %s"
      vim.bo[buf].comments = "s1:/*,mb:*,ex:*/,://"
      local root = root_dir(vim.api.nvim_buf_get_name(buf))
      local config = { name = "flowc", cmd = cmd, root_dir = root, on_attach = opts.on_attach }
      if vim.lsp.start then
        vim.lsp.start(config, { bufnr = buf })
      else
        -- Neovim 0.7: one client per root directory.
        if not clients[root] then
          clients[root] = vim.lsp.start_client(config)
        end
        vim.lsp.buf_attach_client(buf, clients[root])
      end
    end,
  })
end

return M
