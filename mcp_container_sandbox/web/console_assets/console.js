// The sandbox console: sign in with a token or by OAuth (below), list the tenant's sandboxes (refreshed every half
// second), open a terminal of your own in one (xterm.js over a WebSocket), destroy one.
// The token stays in this tab's sessionStorage and goes in the Authorization header only.
'use strict';

const $ = (id) => document.getElementById(id);
const state = { selected: null, socket: null, term: null, fit: null, timer: null, feed: null };

function token() { return sessionStorage.getItem('console-token') || ''; }

async function api(method, path, body) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const raw = body instanceof Blob;
  if (body !== undefined && !raw) headers['Content-Type'] = 'application/json';
  const response = await fetch(`api/${path}`, {
    method, headers, cache: 'no-store', body: body === undefined || raw ? body : JSON.stringify(body),
  });
  if (response.status === 401) { signIn(token() ? 'That token is not accepted here.' : ''); throw new Error('401'); }
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function signIn(message) {
  clearInterval(state.timer);
  closeTerminal();
  $('console').hidden = true;
  $('sign-out').hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message || '';
  offerOAuth().catch(() => {});
}

// Sign-in by OAuth in this tab: the authorization code flow with PKCE, the page a public client of the
// server's authorization server; the code comes back to this page and is exchanged at the server.
async function offerOAuth() {
  const ways = await (await fetch('api/sign-in', { cache: 'no-store' })).json();
  state.oauth = ways.oauth;
  $('oauth').hidden = !ways.oauth;
  $('oauth-unavailable').textContent = ways.oauth_unavailable || '';
  if (ways.oauth) $('oauth-issuer').textContent = `at ${new URL(ways.oauth.authorization_endpoint).host}`;
}

function randomText(bytes) {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

function base64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, '-').replace(/\//g, '_')
    .replace(/=+$/, '');
}

async function startOAuth() {
  const oauth = state.oauth;
  const verifier = randomText(32);
  const flow = { verifier, state: randomText(16), oauth };
  sessionStorage.setItem('console-oauth', JSON.stringify(flow));
  const challenge = base64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  const url = new URL(oauth.authorization_endpoint);
  const query = { response_type: 'code', client_id: oauth.client_id, redirect_uri: oauth.redirect_uri,
    code_challenge: challenge, code_challenge_method: 'S256', state: flow.state, resource: oauth.resource };
  if (oauth.scope) query.scope = oauth.scope;
  for (const [name, value] of Object.entries(query)) url.searchParams.set(name, value);
  location.assign(url.href);
}

// Back from the authorization server with ?code=...&state=... (or ?error=...): the code for a token.
async function finishOAuth() {
  const back = new URLSearchParams(location.search);
  if (!back.has('code') && !back.has('error')) return '';
  history.replaceState(null, '', location.pathname);
  const flow = JSON.parse(sessionStorage.getItem('console-oauth') || 'null');
  sessionStorage.removeItem('console-oauth');
  if (back.has('error')) return `Sign-in refused: ${back.get('error_description') || back.get('error')}`;
  if (!flow || back.get('state') !== flow.state) return 'That sign-in was not started in this tab; try again.';
  const response = await fetch(flow.oauth.token_endpoint, {
    method: 'POST', cache: 'no-store',
    body: new URLSearchParams({ grant_type: 'authorization_code', code: back.get('code'),
      redirect_uri: flow.oauth.redirect_uri, client_id: flow.oauth.client_id, code_verifier: flow.verifier,
      resource: flow.oauth.resource }),
  });
  const answer = await response.json();
  if (!response.ok || !answer.access_token) {
    return `Sign-in failed: ${answer.error_description || answer.error || `HTTP ${response.status}`}`;
  }
  sessionStorage.setItem('console-token', answer.access_token);
  return '';
}

async function start() {
  $('sign-in').hidden = true;
  await refresh();
  $('console').hidden = false;
  $('sign-out').hidden = !token();
  clearInterval(state.timer);
  state.timer = setInterval(() => refresh().catch(() => {}), 500);
}

function age(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return seconds < 120 ? `${seconds} s` : `${Math.round(seconds / 60)} min`;
}

function cell(row, text) {
  const td = document.createElement('td');
  td.textContent = text;
  row.appendChild(td);
  return td;
}

async function refresh() {
  const { sandboxes, admin } = await api('GET', 'sandboxes');
  state.admin = admin;
  document.body.classList.toggle('admin', admin);
  const rows = $('rows');
  rows.replaceChildren();
  for (const sandbox of sandboxes) {
    const row = document.createElement('tr');
    row.dataset.id = sandbox.container_id;
    if (sandbox.container_id === state.selected) row.className = 'selected';
    cell(row, sandbox.container_id).className = 'id';
    cell(row, sandbox.image);
    cell(row, age(sandbox.created_at));
    cell(row, `${Math.round(sandbox.seconds_remaining / 60)} min`);
    cell(row, sandbox.cpu_percent === null ? '' : `${sandbox.cpu_percent}%`).className = 'cpu';
    cell(row, sandbox.memory_bytes === null ? '' : `${(sandbox.memory_bytes / 1048576).toFixed(1)} MB`)
      .className = 'memory';
    cell(row, sandbox.egress || '');
    cell(row, sandbox.ports.join(', '));
    cell(row, sandbox.snapshot_on_expiry ? 'snapshot on expiry' : '');
    if (admin) cell(row, sandbox.tenant).className = 'tenant';
    row.addEventListener('click', () => select(sandbox.container_id));
    rows.appendChild(row);
  }
  const selected = sandboxes.find((s) => s.container_id === state.selected);
  if (selected) showPreviews(selected.previews || []);
  $('count').textContent = `(${sandboxes.length})`;
  $('empty').hidden = sandboxes.length > 0;
  if (state.selected && !sandboxes.some((s) => s.container_id === state.selected)) {
    $('detail-error').textContent = `Sandbox ${state.selected} is gone.`;
    closeTerminal();
  }
}

// The sandbox's preview links (expose_port), each opening the app it serves in a new tab.
function showPreviews(previews) {
  const shown = previews.map((p) => `${p.port} ${p.url}`).join(' ');
  if ($('previews').dataset.shown === shown) return;
  $('previews').dataset.shown = shown;
  $('previews').replaceChildren(...(previews.length ? ['Preview links: '] : []), ...previews.map((preview) => {
    const anchor = Object.assign(document.createElement('a'), { href: preview.url, target: '_blank', rel: 'noopener',
      textContent: `port ${preview.port}` });
    anchor.dataset.port = preview.port;
    return anchor;
  }));
}

function select(id) {
  if (state.selected !== id) {
    closeTerminal();
    showPreviews([]);
    follow(id);
    if (!state.admin) listFiles(id, '/root');
  }
  state.selected = id;
  $('detail-id').textContent = id;
  $('detail-error').textContent = '';
  $('detail-note').textContent = '';
  $('detail').hidden = false;
  for (const row of $('rows').children) row.className = row.dataset.id === id ? 'selected' : '';
}

function socketUrl(path) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return url;
}

// A one-time ticket for one of the sandbox's WebSockets (a browser cannot give them a header).
async function ticketFor(id, purpose) {
  try {
    return (await api('POST', `sandboxes/${id}/tickets?for=${purpose}`)).ticket;
  } catch (error) {
    $('detail-error').textContent = error.message;
    return null;
  }
}

// The sandbox's commands as they run (an agent's included): one block each, output appended live.
async function follow(id) {
  if (state.feed) state.feed.close();
  $('commands').replaceChildren();
  const ticket = await ticketFor(id, 'commands');
  if (!ticket) return;
  const feed = new WebSocket(socketUrl(`api/commands?ticket=${encodeURIComponent(ticket)}`));
  state.feed = feed;
  feed.onmessage = (event) => {
    const change = JSON.parse(event.data);
    if (change.gone) { $('detail-error').textContent = change.gone; return; }
    commandBlock(id, change);
  };
}

function commandBlock(id, change) {
  let block = document.querySelector(`[data-command="${change.command_id}"]`);
  if (!block) {
    block = document.getElementById('command-template').content.firstElementChild.cloneNode(true);
    block.dataset.command = change.command_id;
    block.querySelector('.command-line').textContent = change.command;
    block.querySelector('.interrupt').addEventListener('click', () => {
      api('POST', `sandboxes/${id}/commands/${change.command_id}/signal`, { signal: 'INT' })
        .catch((error) => { $('detail-error').textContent = error.message; });
    });
    $('commands').prepend(block);
  }
  block.querySelector('.stdout').textContent += change.stdout;
  block.querySelector('.stderr').textContent += change.stderr;
  const ended = change.status !== 'running';
  block.querySelector('.status').textContent = ended ? `${change.status}, exit ${change.exit_code}` : 'running';
  block.querySelector('.interrupt').hidden = ended;
  block.dataset.status = change.status;
}

// The file browser: a folder's entries; a folder opens, a file downloads (through a file link).
async function listFiles(id, path) {
  $('files-path').value = path;
  $('files-error').textContent = '';
  const rows = $('file-rows');
  rows.replaceChildren();
  let listing;
  try {
    listing = await api('GET', `sandboxes/${id}/files?path=${encodeURIComponent(path)}`);
  } catch (error) {
    $('files-error').textContent = error.message;
    return;
  }
  const parent = path.replace(/\/[^/]+\/?$/, '') || '/';
  const entries = path === '/' ? listing.entries : [{ name: '..', path: parent, type: 'dir', size_bytes: 0 },
    ...listing.entries];
  for (const entry of entries) {
    const row = document.createElement('tr');
    row.dataset.path = entry.path;
    const name = cell(row, entry.type === 'dir' ? `${entry.name}/` : entry.name);
    name.className = 'file-name';
    cell(row, entry.type === 'dir' ? '' : `${entry.size_bytes} bytes`);
    row.addEventListener('click', () => (entry.type === 'dir' ? listFiles(id, entry.path) : download(id, entry.path)));
    rows.appendChild(row);
  }
}

async function download(id, path) {
  try {
    const link = await api('POST', `sandboxes/${id}/file-links?path=${encodeURIComponent(path)}`);
    const anchor = document.createElement('a');
    anchor.href = link.url;
    anchor.download = path.split('/').pop();
    document.body.appendChild(anchor);
    anchor.click();
    anchor.remove();
  } catch (error) {
    $('files-error').textContent = error.message;
  }
}

async function upload(id, file) {
  const folder = $('files-path').value.replace(/\/$/, '');
  try {
    await api('PUT', `sandboxes/${id}/files?path=${encodeURIComponent(`${folder}/${file.name}`)}`, file);
    await listFiles(id, folder || '/');
  } catch (error) {
    $('files-error').textContent = error.message;
  }
}

function closeTerminal() {
  if (state.socket) state.socket.close();
  if (state.term) state.term.dispose();
  state.socket = state.term = state.fit = null;
}

async function openTerminal() {
  closeTerminal();
  const id = state.selected;
  const ticket = await ticketFor(id, 'terminal');
  if (!ticket) return;
  const term = new Terminal({ cursorBlink: true, fontSize: 14 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($('terminal'));
  fit.fit();
  const socket = new WebSocket(socketUrl(
    `api/terminal?ticket=${encodeURIComponent(ticket)}&cols=${term.cols}&rows=${term.rows}`));
  socket.binaryType = 'arraybuffer';
  const encoder = new TextEncoder();
  socket.onmessage = (event) => term.write(new Uint8Array(event.data));
  socket.onclose = () => { if (state.term === term) term.write('\r\n[the terminal session ended]\r\n'); };
  term.onData((data) => { if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data)); });
  term.onResize(({ cols, rows }) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ resize: [cols, rows] }));
  });
  Object.assign(state, { socket, term, fit });
  window.terminalForTests = { term, socket };
  term.focus();
}

async function snapshotSelected() {
  const id = state.selected;
  try {
    const taken = await api('POST', `sandboxes/${id}/snapshots`);
    $('detail-note').textContent = `Snapshot ${taken.snapshot_id} taken (${taken.size_bytes} bytes): `
      + `create_container(snapshot_id="${taken.snapshot_id}") continues from it.`;
  } catch (error) {
    $('detail-error').textContent = error.message;
  }
}

async function extendSelected() {
  const id = state.selected;
  try {
    const extended = await api('POST', `sandboxes/${id}/lifetime`, { seconds: 1800 });
    const minutes = Math.round(extended.seconds_remaining / 60);
    $('detail-note').textContent = `Sandbox ${id} now lives until ${extended.expires_at} (${minutes} min left; `
      + `at most ${Math.round(extended.most_seconds_remaining / 60)} min from now).`;
    await refresh();
  } catch (error) {
    $('detail-error').textContent = error.message;
  }
}

async function destroySelected() {
  const id = state.selected;
  if (!id || !confirm(`Destroy sandbox ${id}? Its files and running commands go with it.`)) return;
  try {
    await api('DELETE', `sandboxes/${id}`);
    closeTerminal();
    if (state.feed) state.feed.close();
    $('detail').hidden = true;
    state.selected = null;
    await refresh();
  } catch (error) {
    $('detail-error').textContent = error.message;
  }
}

window.addEventListener('DOMContentLoaded', () => {
  $('sign-in-form').addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem('console-token', $('token').value.trim());
    start().catch(() => {});
  });
  $('sign-out').addEventListener('click', () => { sessionStorage.removeItem('console-token'); signIn(''); });
  $('oauth-sign-in').addEventListener('click', () => startOAuth().catch((error) => {
    $('sign-in-error').textContent = error.message;
  }));
  $('open-terminal').addEventListener('click', () => openTerminal());
  $('destroy').addEventListener('click', () => destroySelected());
  $('snapshot').addEventListener('click', () => snapshotSelected());
  $('extend').addEventListener('click', () => extendSelected());
  $('files-form').addEventListener('submit', (event) => {
    event.preventDefault();
    listFiles(state.selected, $('files-path').value || '/');
  });
  $('upload').addEventListener('change', (event) => {
    const [file] = event.target.files;
    if (file) upload(state.selected, file);
    event.target.value = '';
  });
  window.addEventListener('resize', () => { if (state.fit) state.fit.fit(); });
  finishOAuth().then((problem) => {
    if (problem) signIn(problem);
    else start().catch(() => {});  // a server without tokens, or a token already in this tab
  }).catch((error) => signIn(error.message));
});
