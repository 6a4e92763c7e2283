// Runs a TensorFlow.js graph model on a batch with the pure-JavaScript CPU backend (the reference runtime
// for the opomjax TensorFlow.js importer).
//
//   node embed.js MODEL_JSON INPUT_NPY OUTPUT_PREFIX NODE[,NODE...]
//
// MODEL_JSON: a graph model's model.json (its weight shards next to it, read from disk by a custom IO handler).
// INPUT_NPY: a little-endian float32 .npy array, the placeholder's value (NHWC, already preprocessed).
// For each output NODE, writes OUTPUT_PREFIX + index + ".npy" (float32). Resolve '@tensorflow/tfjs' from the
// folder in $TFJS_NODE_MODULES (where `npm install` put it), else the usual Node lookup.
'use strict';
const fs = require('fs');
const path = require('path');

function requireTfjs() {
  const where = process.env.TFJS_NODE_MODULES;
  if (where) return require(path.join(where, '@tensorflow', 'tfjs'));
  return require('@tensorflow/tfjs');
}

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.toString('latin1', 1, 6) !== 'NUMPY') throw new Error(`${file} is not a .npy file`);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', start, start + headerLen);
  if (!/'descr':\s*'<f4'/.test(header) || /'fortran_order':\s*True/.test(header)) {
    throw new Error(`${file}: need a C-order little-endian float32 array, header ${header}`);
  }
  const shape = header.match(/'shape':\s*\(([^)]*)\)/)[1].split(',').map((s) => s.trim()).filter((s) => s)
      .map(Number);
  const offset = start + headerLen;
  const data = new Float32Array(buf.buffer.slice(buf.byteOffset + offset, buf.byteOffset + buf.length));
  return {data, shape};
}

function writeNpy(file, data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const head = Buffer.alloc(10);
  head.write('\x93NUMPY', 0, 'latin1');
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  fs.writeFileSync(file, Buffer.concat([head, Buffer.from(header, 'latin1'),
    Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

function fileHandler(modelJson) {
  return {
    load: async () => {
      const doc = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
      const specs = [];
      const buffers = [];
      for (const group of doc.weightsManifest || []) {
        for (const p of group.paths) buffers.push(fs.readFileSync(path.join(path.dirname(modelJson), p)));
        specs.push(...group.weights);
      }
      const all = Buffer.concat(buffers);
      return {
        modelTopology: doc.modelTopology,
        format: doc.format,
        generatedBy: doc.generatedBy,
        convertedBy: doc.convertedBy,
        signature: doc.signature,
        userDefinedMetadata: doc.userDefinedMetadata,
        weightSpecs: specs,
        weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.length),
      };
    },
  };
}

async function main() {
  const [modelJson, inputNpy, outputPrefix, nodes] = process.argv.slice(2);
  if (!nodes) throw new Error('usage: node embed.js MODEL_JSON INPUT_NPY OUTPUT_PREFIX NODE[,NODE...]');
  const tf = requireTfjs();
  await tf.setBackend('cpu');
  const model = await tf.loadGraphModel(fileHandler(modelJson));
  const input = readNpy(inputNpy);
  const x = tf.tensor(input.data, input.shape, 'float32');
  const names = nodes.split(',');
  let outs = model.execute(x, names);
  if (!Array.isArray(outs)) outs = [outs];
  for (let i = 0; i < outs.length; i++) {
    writeNpy(`${outputPrefix}${i}.npy`, await outs[i].data(), outs[i].shape);
  }
  console.log(JSON.stringify({backend: tf.getBackend(), version: tf.version.tfjs, outputs: outs.map((o) => o.shape)}));
}

main().catch((e) => {
  console.error(`error: ${e.message}`);
  process.exit(1);
});
