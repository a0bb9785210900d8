// probe.mjs PORT: exit 0 when a Postgres server on 127.0.0.1:PORT answers `select 1` (simple
// query protocol, trust/any-password auth). Used by `start` when psql is not installed.
import net from 'node:net'
const port = Number(process.argv[2])
const cstr = (s) => Buffer.from(s + '\0')
function msg(t, body) { const b = Buffer.alloc(5 + body.length); b[0] = t.charCodeAt(0); b.writeInt32BE(4 + body.length, 1); body.copy(b, 5); return b }
const params = Buffer.concat([cstr('user'), cstr('postgres'), cstr('database'), cstr('postgres'), Buffer.from([0])])
const startup = Buffer.alloc(8 + params.length)
startup.writeInt32BE(startup.length, 0); startup.writeInt32BE(196608, 4); params.copy(startup, 8)
const sock = net.connect(port, '127.0.0.1')
const timer = setTimeout(() => process.exit(1), 5000)
let buf = Buffer.alloc(0), queried = false
sock.on('connect', () => sock.write(startup))
sock.on('error', () => process.exit(1))
sock.on('data', (d) => {
  buf = Buffer.concat([buf, d])
  while (buf.length >= 5 && buf.length >= 1 + buf.readInt32BE(1)) {
    const t = String.fromCharCode(buf[0]), len = buf.readInt32BE(1), body = buf.subarray(5, 1 + len)
    buf = buf.subarray(1 + len)
    if (t === 'E') process.exit(1)
    if (t === 'R' && body.readInt32BE(0) !== 0) sock.write(msg('p', cstr('postgres')))
    if (t === 'D' && body.toString('latin1').endsWith('1')) { clearTimeout(timer); sock.end(msg('X', Buffer.alloc(0))); process.exitCode = 0; sock.on('close', () => process.exit(0)) }
    if (t === 'Z' && !queried) { queried = true; sock.write(msg('Q', cstr('select 1'))) }
  }
})
