// For jco componentize --bundle: the contract's imports (tbgw:converter/...) are
// the host's, not modules to bundle.
export default { external: [/^tbgw:/] };
