// Validates Kubernetes manifests against Istio's published CRD schemas, as packaged by
// @kubernetes-models/istio (for tests/istio_kit.rs). Usage: node validate.mjs <file.yaml>...
// Prints {"documents": [{"file", "apiVersion", "kind", "name", "ok", "error", "document"}]}: every
// document of every file (`document`: the manifest as JSON). A kind the package does not know is
// an error, not a pass.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

const documents = [];
for (const file of process.argv.slice(2)) {
  for (const parsed of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (parsed.errors.length > 0) {
      documents.push({ file, ok: false, error: `YAML: ${parsed.errors[0].message}` });
      continue;
    }
    const doc = parsed.toJS();
    if (doc === null) continue;
    const entry = { file, apiVersion: doc.apiVersion, kind: doc.kind, name: doc.metadata?.name, document: doc };
    try {
      const [group, version] = String(doc.apiVersion).split("/");
      const module = await import(`@kubernetes-models/istio/${group}/${version}`);
      const Model = module[doc.kind];
      if (typeof Model !== "function") throw new Error(`unknown kind ${doc.kind} in ${doc.apiVersion}`);
      new Model(doc).validate();
      documents.push({ ...entry, ok: true });
    } catch (error) {
      documents.push({ ...entry, ok: false, error: String(error?.message ?? error).slice(0, 2000) });
    }
  }
}
console.log(JSON.stringify({ documents }));
