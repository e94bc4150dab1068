/**
 * A throw-away certificate authority for tests, CI and trying the federation on one machine:
 * `openssl` makes an ECDSA P-256 CA, a server certificate for the loopback address, and one
 * client certificate per identity (the coordinator and each site), all valid for a few days.
 * A real deployment uses certificates from its own CA; nothing here is meant to last.
 *
 * @example
 * ```ts
 * const dir = await Deno.makeTempDir();
 * const pki = await makeThrowawayPki(dir, ["coordinator", "site-a"]);
 * const pem = await Deno.readTextFile(pki.clients["site-a"].certFile); // `${dir}/site-a.pem`
 * pem.startsWith("-----BEGIN CERTIFICATE-----"); // true
 * await Deno.remove(dir, { recursive: true });
 * ```
 * @module
 */
import { join } from "node:path";
import { randomHex } from "../hex.ts";

/** A certificate and its private key, as PEM files. */
export interface CertFiles {
  certFile: string;
  keyFile: string;
}

/** The files of a throw-away PKI. */
export interface Pki {
  caFile: string;
  server: CertFiles;
  clients: Record<string, CertFiles>;
}

async function openssl(args: string[], what: string): Promise<void> {
  let out;
  try {
    out = await new Deno.Command("openssl", { args, stdout: "piped", stderr: "piped" }).output();
  } catch (err) {
    throw new Error(`openssl not found (${(err as Error).message}): apt-get install -y openssl`);
  }
  if (!out.success) {
    throw new Error(
      `openssl failed making ${what}: ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
}

const randomSerial = () => "0x" + randomHex(12);

async function leaf(
  dir: string,
  ca: { certFile: string; keyFile: string },
  name: string,
  extensions: string,
  days: number,
): Promise<CertFiles> {
  const files = { certFile: join(dir, `${name}.pem`), keyFile: join(dir, `${name}.key`) };
  const csr = join(dir, `${name}.csr`);
  const ext = join(dir, `${name}.ext`);
  // deno-fmt-ignore
  await openssl([
    "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", files.keyFile, "-out", csr, "-subj", `/CN=${name}`,
  ], `the key of ${name}`);
  await Deno.writeTextFile(ext, extensions);
  // deno-fmt-ignore
  await openssl([
    "x509", "-req", "-in", csr, "-CA", ca.certFile, "-CAkey", ca.keyFile,
    "-set_serial", randomSerial(), "-days", String(days), "-out", files.certFile, "-extfile", ext,
  ], `the certificate of ${name}`);
  await Deno.chmod(files.keyFile, 0o600);
  await Deno.remove(csr);
  await Deno.remove(ext);
  return files;
}

/**
 * Makes a CA, a server certificate for `127.0.0.1`/`localhost` and a client certificate
 * (CN = the name) for each of `clients`, in `dir`. Keys are written 0600.
 */
export async function makeThrowawayPki(
  dir: string,
  clients: readonly string[],
  { days = 2 } = {},
): Promise<Pki> {
  await Deno.mkdir(dir, { recursive: true });
  const ca = { certFile: join(dir, "ca.pem"), keyFile: join(dir, "ca.key") };
  // deno-fmt-ignore
  await openssl([
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", ca.keyFile, "-out", ca.certFile, "-days", String(days),
    "-subj", "/CN=deer-federation-throwaway-ca",
    "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
  ], "the CA");
  await Deno.chmod(ca.keyFile, 0o600);
  const base = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n";
  const server = await leaf(
    dir,
    ca,
    "server",
    base + "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    days,
  );
  const out: Record<string, CertFiles> = {};
  for (const name of clients) {
    out[name] = await leaf(dir, ca, name, base + "extendedKeyUsage=clientAuth\n", days);
  }
  return { caFile: ca.certFile, server, clients: out };
}
