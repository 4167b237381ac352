// jest for the pure logic (src/apply.ts) on a standalone YNotebook: no browser, no JupyterLab UI.
// @jupyter/ydoc ships ES modules only, so ts-jest compiles it (and our TypeScript) to CommonJS;
// yjs, lib0 and y-protocols have CommonJS builds and are left alone.
module.exports = {
  testEnvironment: 'node',
  testMatch: ['<rootDir>/src/__tests__/**/*.spec.ts'],
  transform: {
    '^.+\\.(ts|js)$': [
      'ts-jest',
      {
        diagnostics: false,
        tsconfig: {
          allowJs: true,
          esModuleInterop: true,
          module: 'commonjs',
          target: 'es2018',
          skipLibCheck: true,
          types: ['jest']
        }
      }
    ]
  },
  transformIgnorePatterns: ['/node_modules/(?!@jupyter/ydoc/)']
};
